// Drives the real published @clearblade/iot DeviceManagerClient against the in-project
// ClearBlade IoT Core emulator over HTTPS, to check that the emulator serves what the client
// actually sends (see tests/emulators/tests/clearblade_compat.rs, which starts the emulator and
// runs this).
//
// Environment:
//   CLEARBLADE_CONFIGURATION  absolute path of the service-account JSON file
//                             {"systemKey","token","url","project"}, url = the emulator's
//                             https://127.0.0.1:PORT (the client reads it with require(), so
//                             the name must end in .json)
//   CB_REGION, CB_REGISTRY    the registry to work in
//   DEVICE_ID                 a device id to create and delete (must not exist)
//   KEPT_DEVICE_ID            a device id to create, give two keys and leave in place
//   KEY1_PEM, KEY2_PEM        two P-256 public keys (PEM, "PUBLIC KEY")
//   CB_THROTTLED_ID           optional: a device id whose GET the emulator answers 503
//   NODE_EXTRA_CA_CERTS       the emulator's CA certificate (PEM file), so TLS verification works
//
// How the client reaches the emulator: the client strips the scheme from the service
// account's `url` and from the regional `url` getRegistryCredentials answers, and passes the
// rest as `host` to https.request without a port, so it always speaks HTTPS to port 443 and a
// URL with a port fails (`getaddrinfo ENOTFOUND 127.0.0.1:PORT`: the whole `host:port` string
// goes to DNS). Real ClearBlade URLs have no port. The one thing changed here is where the TCP
// connection goes: https.globalAgent (which the client's requests use) is replaced by one that
// splits such a `host:port` into host and port before connecting. TLS verification (against
// 127.0.0.1 in the emulator's certificate), request lines, headers, tokens, bodies, the
// credentials cache and error handling are the client's own.
//
// Exits 0 when every step matched, 1 with a message on the first mismatch, 2 on bad usage.

import https from 'node:https';
import { createRequire } from 'node:module';

import { expectEqual, expectTruthy, runChecks, step } from './check.mjs';

const require = createRequire(import.meta.url);
const iot = require('@clearblade/iot');

const configPath = process.env.CLEARBLADE_CONFIGURATION;
const region = process.env.CB_REGION;
const registryId = process.env.CB_REGISTRY;
const deviceId = process.env.DEVICE_ID;
const keptId = process.env.KEPT_DEVICE_ID;
const key1 = process.env.KEY1_PEM;
const key2 = process.env.KEY2_PEM;
const throttledId = process.env.CB_THROTTLED_ID;

if (!configPath || !region || !registryId || !deviceId || !keptId || !key1 || !key2) {
	console.error(
		'usage: CLEARBLADE_CONFIGURATION=/abs/sa.json CB_REGION=... CB_REGISTRY=... ' +
			'DEVICE_ID=... KEPT_DEVICE_ID=... KEY1_PEM=... KEY2_PEM=... ' +
			'NODE_EXTRA_CA_CERTS=ca.pem node clearblade-compat.mjs',
	);
	process.exit(2);
}

const serviceAccount = require(configPath);
const emulatorHost = new URL(serviceAccount.url).host; // 127.0.0.1:PORT

/** Splits the `host:port` the client passes as `host` (only the emulator's) before connecting. */
class EmulatorAgent extends https.Agent {
	createConnection(options, callback) {
		if (options.host === emulatorHost) {
			const at = emulatorHost.lastIndexOf(':');
			options = {
				...options,
				host: emulatorHost.slice(0, at),
				port: Number(emulatorHost.slice(at + 1)),
			};
		}
		return super.createConnection(options, callback);
	}
}
https.globalAgent = new EmulatorAgent({ keepAlive: true });

/** Awaits `promise`, which must reject with the Google-style error `{error: {code, status}}`. */
async function expectServerError(promise, code, status, what) {
	let result;
	try {
		result = await promise;
	} catch (err) {
		if (err?.error?.code !== code || err?.error?.status !== status) {
			throw new Error(`${what}: expected ${code} ${status}, got ${JSON.stringify(err)}`);
		}
		console.log(`ok - ${what} rejects with ${code} ${status}`);
		return err;
	}
	throw new Error(`${what}: expected ${code} ${status}, but it succeeded: ${JSON.stringify(result)}`);
}

/** Awaits `promise`, which must reject with `{details}` (the client's non-JSON error form). */
async function expectDetails(promise, needle, what) {
	let result;
	try {
		result = await promise;
	} catch (err) {
		if (typeof err?.details !== 'string' || !err.details.includes(needle)) {
			throw new Error(`${what}: expected details with ${needle}, got ${JSON.stringify(err)}`);
		}
		console.log(`ok - ${what} rejects with details containing ${needle}`);
		return err;
	}
	throw new Error(`${what}: expected a rejection, but it succeeded: ${JSON.stringify(result)}`);
}

const cred = (key) => ({ publicKey: { format: 'ES256_PEM', key } });

async function run() {
	// Reads CLEARBLADE_CONFIGURATION, as the client's README says.
	const client = new iot.v1.DeviceManagerClient();
	const project = await client.getProjectId();
	expectEqual(project, serviceAccount.project, 'getProjectId: the service account project');
	const parent = client.registryPath(project, region, registryId);
	const name = client.devicePath(project, region, registryId, deviceId);

	step('createDevice (ES256_PEM)');
	const [created] = await client.createDevice({
		parent,
		device: { id: deviceId, credentials: [cred(key1)], metadata: { origin: 'compat' } },
	});
	expectEqual(created.id, deviceId, 'create: id');
	expectEqual(typeof created.numId, 'string', 'create: numId is a string');
	expectEqual(created.name, `${parent}/devices/${created.numId}`, 'create: name ends in numId');
	expectEqual(created.credentials?.length, 1, 'create: one credential');
	expectEqual(created.credentials[0].publicKey.format, 'ES256_PEM', 'create: format');
	expectEqual(created.credentials[0].publicKey.key, key1, 'create: key');
	expectEqual(created.credentials[0].expirationTime, '1970-01-01T00:00:00Z', 'create: no expiry');
	expectEqual(created.metadata?.origin, 'compat', 'create: metadata');
	expectEqual(created.config?.version, '1', 'create: config version');

	step('createDevice again');
	await expectServerError(
		client.createDevice({ parent, device: { id: deviceId, credentials: [cred(key2)] } }),
		409,
		'ALREADY_EXISTS',
		'creating an existing device',
	);

	step('createDevice with a bad key');
	await expectServerError(
		client.createDevice({
			parent,
			device: { id: `${deviceId}-bad`, credentials: [cred('not a PEM key')] },
		}),
		400,
		'INVALID_ARGUMENT',
		'a key that is not ES256_PEM',
	);

	step('getDevice');
	const [got] = await client.getDevice({ name });
	expectEqual(got.id, deviceId, 'get: id');
	expectEqual(got.numId, created.numId, 'get: numId');
	expectEqual(got.credentials?.[0]?.publicKey?.key, key1, 'get: key');

	step('getDevice by the numId name the service answered');
	const [byNum] = await client.getDevice({ name: created.name });
	expectEqual(byNum.id, deviceId, 'get by numId: id');

	step('getDevice with a fieldMask');
	const [masked] = await client.getDevice({ name, fieldMask: { paths: ['metadata'] } });
	expectEqual(masked.metadata?.origin, 'compat', 'masked get: metadata');
	expectEqual(masked.credentials, undefined, 'masked get: no credentials');

	step('updateDevice (credentials: two keys)');
	const [updated] = await client.updateDevice({
		device: { name, credentials: [cred(key2), cred(key1)] },
		updateMask: { paths: ['credentials'] },
	});
	expectEqual(updated.credentials?.length, 2, 'update: two credentials');
	expectEqual(updated.credentials[0].publicKey.key, key2, 'update: new key first');
	expectEqual(updated.credentials[1].publicKey.key, key1, 'update: old key second');
	expectEqual(updated.metadata?.origin, 'compat', 'update: metadata untouched');

	step('updateDevice without an updateMask');
	await expectServerError(
		client.updateDevice({ device: { name, blocked: true } }),
		400,
		'INVALID_ARGUMENT',
		'an update without a mask',
	);

	step('a second device, updated to two keys and kept');
	const kept = client.devicePath(project, region, registryId, keptId);
	await client.createDevice({ parent, device: { id: keptId, credentials: [cred(key1)] } });
	await client.updateDevice({
		device: { name: kept, credentials: [cred(key2), cred(key1)] },
		updateMask: { paths: ['credentials'] },
	});
	console.log('ok - kept device created and updated');

	step('listDevices');
	const [devices] = await client.listDevices({ parent });
	const ids = devices.map((d) => d.id).sort();
	expectEqual(JSON.stringify(ids), JSON.stringify([deviceId, keptId].sort()), 'list: ids');
	expectTruthy(devices.every((d) => typeof d.numId === 'string'), 'list: numIds');
	const [only] = await client.listDevices({ parent, deviceIds: [keptId], pageSize: 5 });
	expectEqual(JSON.stringify(only.map((d) => d.id)), JSON.stringify([keptId]), 'list: deviceIds');

	step('deleteDevice');
	const [deleted] = await client.deleteDevice({ name });
	expectEqual(JSON.stringify(deleted), '{}', 'delete resolves {}');

	step('after delete');
	await expectServerError(client.getDevice({ name }), 404, 'NOT_FOUND', 'get after delete');
	await expectServerError(client.deleteDevice({ name }), 404, 'NOT_FOUND', 'delete again');

	step('an unknown registry');
	// getRegistryCredentials answers 404; the client does not look at the status, finds no
	// systemKey in the body and rejects with {details: 'Invalid response from ...'}.
	await expectDetails(
		client.getDevice({ name: client.devicePath(project, region, 'no-such-registry', deviceId) }),
		'NOT_FOUND',
		'a device in an unknown registry',
	);

	step('a wrong admin token');
	const wrong = new iot.v1.DeviceManagerClient({
		credentials: { ...serviceAccount, token: 'not-the-admin-token' },
	});
	await expectDetails(wrong.getDevice({ name }), 'UNAUTHENTICATED', 'a wrong admin token');

	if (throttledId) {
		step('an injected 503');
		// The client does not retry.
		await expectServerError(
			client.getDevice({ name: client.devicePath(project, region, registryId, throttledId) }),
			503,
			'UNAVAILABLE',
			'a get the emulator fails',
		);
	}
}

await runChecks(run, {
	passed: 'all @clearblade/iot compatibility checks passed',
	failed: 'FAILED',
	details: (err) => (err?.error || err?.details ? JSON.stringify(err) : undefined),
});

// Drives the real published azure-iothub Registry against the in-project Azure IoT Hub registry
// emulator over HTTPS, to check that the emulator serves what the SDK actually sends (see
// tests/emulators/tests/iothub_compat.rs, which starts the emulator and runs this).
//
// Environment:
//   IOTHUB_CONNECTION_STRING  HostName=<hub host>;SharedAccessKeyName=<policy>;SharedAccessKey=<key>
//   IOTHUB_TLS_PORT           the emulator's HTTPS port on 127.0.0.1
//   DEVICE_ID                 the device id to create and delete (must not exist)
//   IOTHUB_THROTTLED_ID       optional: a device id whose GET the emulator answers 429
//   NODE_EXTRA_CA_CERTS       the emulator's CA certificate (PEM file), so TLS verification works
//
// How the SDK reaches the emulator: azure-iothub always connects to `HostName` on port 443 (it has
// no port setting; `HostName=127.0.0.1:PORT` fails with `getaddrinfo ENOTFOUND 127.0.0.1:PORT`,
// because the host string is handed to https.request as a host name). So the connection string
// keeps the hub's real-looking host name (which is what the SDK signs the SAS token for, sends as
// TLS SNI and checks the certificate against) and the one thing changed is where the TCP
// connection goes: the Registry's keep-alive https.Agent is replaced by one whose DNS lookup
// answers 127.0.0.1 for the hub host and whose default port is the emulator's. Request lines,
// headers, tokens, bodies and error handling are the SDK's own.
//
// Exits 0 when every step matched, 1 with a message on the first mismatch, 2 on bad usage.

import https from 'node:https';
import dns from 'node:dns';
import iothub from 'azure-iothub';

import { expectEqual, expectTruthy, runChecks, step } from './check.mjs';

const { Registry, ConnectionString } = iothub;

const connectionString = process.env.IOTHUB_CONNECTION_STRING;
const port = Number(process.env.IOTHUB_TLS_PORT);
const deviceId = process.env.DEVICE_ID;
const throttledId = process.env.IOTHUB_THROTTLED_ID;

if (!connectionString || !Number.isInteger(port) || port <= 0 || !deviceId) {
	console.error(
		'usage: IOTHUB_CONNECTION_STRING=... IOTHUB_TLS_PORT=... DEVICE_ID=... ' +
			'NODE_EXTRA_CA_CERTS=ca.pem node iothub-compat.mjs',
	);
	process.exit(2);
}

const hubHost = ConnectionString.parse(connectionString).HostName;

/** An https.Agent that connects to 127.0.0.1:<port> whenever the SDK asks for the hub host. */
function emulatorAgent() {
	const agent = new https.Agent({
		keepAlive: true,
		lookup(hostname, options, callback) {
			if (hostname.toLowerCase() !== hubHost.toLowerCase()) {
				return dns.lookup(hostname, options, callback);
			}
			if (options && options.all) {
				return callback(null, [{ address: '127.0.0.1', family: 4 }]);
			}
			return callback(null, '127.0.0.1', 4);
		},
	});
	// https.Agent sets defaultPort to 443 in its constructor; requests without a port use it.
	agent.defaultPort = port;
	return agent;
}

function registryFor(cs) {
	const registry = Registry.fromConnectionString(cs);
	// The Registry constructor installs `new https.Agent({ keepAlive: true })` through this
	// same call; replace it with the routed one (see the comment at the top).
	registry._restApiClient.setOptions({ http: { agent: emulatorAgent() } });
	return registry;
}

// Thumbprints as an X.509 tool prints them: SHA-1 and SHA-256, uppercase hex.
const TP1 = 'A1B2C3D4E5F60718293A4B5C6D7E8F9001122334';
const TP2 = '00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF';
const TP3 = 'FFEEDDCCBBAA99887766554433221100FFEEDDCC';

async function expectRejects(promise, errorName, what) {
	try {
		const result = await promise;
		throw new Error(
			`${what}: expected ${errorName}, but it succeeded with ${JSON.stringify(result?.responseBody)}`,
		);
	} catch (err) {
		if (err?.name !== errorName) {
			throw new Error(
				`${what}: expected ${errorName}, got ${err?.name}: ${err?.message} ` +
					`(HTTP ${err?.response?.statusCode}, body ${JSON.stringify(err?.responseBody)})`,
			);
		}
		console.log(`ok - ${what} rejects with ${errorName} (HTTP ${err.response?.statusCode})`);
		return err;
	}
}

async function run() {
	const registry = registryFor(connectionString);

	step('create (selfSigned, no If-Match)');
	const created = await registry.create({
		deviceId,
		status: 'enabled',
		authentication: {
			type: 'selfSigned',
			x509Thumbprint: { primaryThumbprint: TP1, secondaryThumbprint: TP2 },
		},
	});
	expectEqual(created.httpResponse.statusCode, 200, 'create answers 200');
	expectEqual(created.responseBody.deviceId, deviceId, 'create: deviceId');
	expectEqual(created.responseBody.authentication.type, 'selfSigned', 'create: auth type');
	expectEqual(
		created.responseBody.authentication.x509Thumbprint.primaryThumbprint,
		TP1,
		'create: primary thumbprint',
	);
	expectEqual(
		created.responseBody.authentication.x509Thumbprint.secondaryThumbprint,
		TP2,
		'create: secondary thumbprint',
	);
	expectTruthy(created.responseBody.etag, 'create: etag');
	expectTruthy(created.responseBody.generationId, 'create: generationId');
	expectEqual(created.responseBody.connectionState, 'Disconnected', 'create: connectionState');

	step('create again');
	await expectRejects(
		registry.create({ deviceId, authentication: { x509Thumbprint: { primaryThumbprint: TP1 } } }),
		'DeviceAlreadyExistsError',
		'creating an existing device',
	);

	step('get');
	const got = await registry.get(deviceId);
	expectEqual(got.responseBody.deviceId, deviceId, 'get: deviceId');
	expectEqual(got.responseBody.status, 'enabled', 'get: status');
	expectEqual(
		got.responseBody.authentication.x509Thumbprint.primaryThumbprint,
		TP1,
		'get: primary thumbprint',
	);
	expectEqual(
		got.responseBody.authentication.x509Thumbprint.secondaryThumbprint,
		TP2,
		'get: secondary thumbprint',
	);
	expectEqual(got.responseBody.etag, created.responseBody.etag, 'get: same etag as create');

	step('update (If-Match: "*")');
	// The SDK's Device from get, changed and sent back whole (server fields included).
	const device = got.responseBody;
	device.status = 'disabled';
	device.authentication.x509Thumbprint.secondaryThumbprint = TP3;
	const updated = await registry.update(device);
	expectEqual(updated.responseBody.status, 'disabled', 'update: status');
	expectEqual(
		updated.responseBody.authentication.x509Thumbprint.secondaryThumbprint,
		TP3,
		'update: new secondary thumbprint',
	);
	expectEqual(
		updated.responseBody.generationId,
		created.responseBody.generationId,
		'update: generationId kept',
	);
	if (updated.responseBody.etag === created.responseBody.etag) {
		throw new Error('update: the etag did not change');
	}
	console.log('ok - update: etag changed');

	step('get after update');
	const reread = await registry.get(deviceId);
	expectEqual(reread.responseBody.status, 'disabled', 'get after update: status');
	expectEqual(
		reread.responseBody.authentication.x509Thumbprint.secondaryThumbprint,
		TP3,
		'get after update: secondary thumbprint',
	);

	step('create (no authentication: the SDK sends sas with empty keys)');
	const sasId = `${deviceId}-sas`;
	const sas = await registry.create({ deviceId: sasId });
	expectEqual(sas.responseBody.authentication.type, 'sas', 'sas create: auth type');
	const keys = sas.responseBody.authentication.symmetricKey;
	for (const which of ['primaryKey', 'secondaryKey']) {
		const bytes = Buffer.from(keys[which] ?? '', 'base64');
		if (bytes.length < 16) {
			throw new Error(`sas create: ${which} was not generated: ${JSON.stringify(keys)}`);
		}
	}
	console.log('ok - sas create: keys generated');

	step('list');
	const listed = await registry.list();
	const ids = listed.responseBody.map((d) => d.deviceId).sort();
	expectEqual(JSON.stringify(ids), JSON.stringify([deviceId, sasId].sort()), 'list: device ids');

	step('delete (If-Match: "*")');
	const deleted = await registry.delete(deviceId);
	expectEqual(deleted.httpResponse.statusCode, 204, 'delete answers 204');
	await registry.delete(sasId);
	console.log('ok - delete of the sas device');

	step('get after delete');
	await expectRejects(registry.get(deviceId), 'DeviceNotFoundError', 'get after delete');
	step('delete again');
	await expectRejects(registry.delete(deviceId), 'DeviceNotFoundError', 'delete again');

	step('wrong key');
	const parsed = ConnectionString.parse(connectionString);
	const wrongKey = `HostName=${parsed.HostName};SharedAccessKeyName=${parsed.SharedAccessKeyName};SharedAccessKey=${Buffer.from('not the key of this policy').toString('base64')}`;
	await expectRejects(registryFor(wrongKey).get(deviceId), 'UnauthorizedError', 'a wrong key');

	if (throttledId) {
		step('throttled get');
		await expectRejects(registry.get(throttledId), 'ThrottlingError', 'a throttled get');
	}
}

await runChecks(run, {
	passed: 'all azure-iothub compatibility checks passed',
	failed: 'FAILED',
	details: (err) =>
		err?.responseBody === undefined
			? undefined
			: `HTTP ${err.response?.statusCode}, body: ${err.responseBody}`,
});

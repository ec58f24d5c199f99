// Drives the real published balena-sdk against the in-project balenaCloud API emulator, to check
// that the emulator serves what the SDK actually sends (see
// tests/emulators/tests/balena_sdk_compat.rs, which starts the emulator and runs this).
//
// Usage: node balena-sdk-compat.mjs URL API_KEY DEVICE_UUID SERVICE_NAME
//   or set BALENA_API_URL, BALENA_API_KEY, DEVICE_UUID, SERVICE_NAME.
// Exits 0 when every step matched, 1 with a message on the first mismatch, 2 on bad usage.

import { getSdk } from 'balena-sdk';

import { expectEqual, runChecks, step } from './check.mjs';

const [argUrl, argKey, argUuid, argService] = process.argv.slice(2);
const url = argUrl ?? process.env.BALENA_API_URL;
const apiKey = argKey ?? process.env.BALENA_API_KEY;
const uuid = argUuid ?? process.env.DEVICE_UUID;
const serviceName = argService ?? process.env.SERVICE_NAME;

if (!url || !apiKey || !uuid || !serviceName) {
	console.error(
		'usage: node balena-sdk-compat.mjs URL API_KEY DEVICE_UUID SERVICE_NAME\n' +
			'   (or BALENA_API_URL, BALENA_API_KEY, DEVICE_UUID, SERVICE_NAME in the environment)',
	);
	process.exit(2);
}

const balena = getSdk({
	apiUrl: url.endsWith('/') ? url : `${url}/`,
	dataDirectory: false,
	// The emulator can be told to answer 429 with Retry-After; the SDK should wait and retry.
	retryRateLimitedRequests: true,
});

async function run() {
	step('auth.loginWithToken');
	await balena.auth.loginWithToken(apiKey);

	step('device.get');
	const device = await balena.models.device.get(uuid);
	expectEqual(device.uuid, uuid, 'device.get(uuid).uuid');
	const partial = await balena.models.device.get(uuid, { $select: ['id', 'uuid'] });
	expectEqual(partial.id, device.id, 'device.get(uuid, $select).id');

	// Device environment variables: create, read, upsert (409 then PATCH), remove.
	const env = balena.models.device.envVar;
	step('device.envVar.set (create)');
	await env.set(uuid, 'COMPAT_A', 'one');
	step('device.envVar.get');
	expectEqual(await env.get(uuid, 'COMPAT_A'), 'one', "envVar.get after set 'one'");
	step('device.envVar.set (update)');
	await env.set(uuid, 'COMPAT_A', 'two');
	expectEqual(await env.get(uuid, 'COMPAT_A'), 'two', "envVar.get after set 'two'");
	step('device.envVar.set (by id)');
	await env.set(device.id, 'COMPAT_B', "it's \"quoted\" & (odd) / ü");
	expectEqual(
		await env.get(device.id, 'COMPAT_B'),
		"it's \"quoted\" & (odd) / ü",
		'envVar.get by id with odd characters',
	);
	step('device.envVar.getAllByDevice');
	const all = await env.getAllByDevice(uuid);
	const names = all.map((v) => v.name).sort();
	expectEqual(names.join(','), 'COMPAT_A,COMPAT_B', 'envVar.getAllByDevice names');
	step('device.envVar.remove');
	await env.remove(uuid, 'COMPAT_A');
	await env.remove(device.id, 'COMPAT_B');
	expectEqual(await env.get(uuid, 'COMPAT_A'), undefined, 'envVar.get after remove');

	// Service variables, by service name and by service id.
	const svc = balena.models.device.serviceVar;
	step('device.serviceVar.set (create)');
	await svc.set(uuid, serviceName, 'COMPAT_S', 'x');
	step('device.serviceVar.get');
	expectEqual(await svc.get(uuid, serviceName, 'COMPAT_S'), 'x', "serviceVar.get after set 'x'");
	step('device.serviceVar.set (update)');
	await svc.set(uuid, serviceName, 'COMPAT_S', 'y');
	expectEqual(await svc.get(uuid, serviceName, 'COMPAT_S'), 'y', "serviceVar.get after set 'y'");
	step('service lookup by id');
	const [service] = await balena.pine.get({
		resource: 'service',
		options: { $select: 'id', $filter: { service_name: serviceName } },
	});
	if (service == null) {
		throw new Error(`no service named ${serviceName}`);
	}
	expectEqual(
		await svc.get(device.id, service.id, 'COMPAT_S'),
		'y',
		'serviceVar.get by device id and service id',
	);
	step('device.serviceVar.getAllByDevice');
	const serviceVars = await svc.getAllByDevice(uuid);
	expectEqual(
		serviceVars.map((v) => v.name).join(','),
		'COMPAT_S',
		'serviceVar.getAllByDevice names',
	);
	step('device.serviceVar.remove');
	await svc.remove(uuid, serviceName, 'COMPAT_S');
	expectEqual(await svc.get(uuid, serviceName, 'COMPAT_S'), undefined, 'serviceVar.get after remove');

	// Tags, which the provisioning lock uses.
	const tags = balena.models.device.tags;
	step('device.tags.set');
	await tags.set(uuid, 'compat-tag', 'v1');
	await tags.set(uuid, 'compat-tag', 'v2');
	step('device.tags.getAllByDevice');
	const deviceTags = await tags.getAllByDevice(uuid);
	expectEqual(
		deviceTags.map((t) => `${t.tag_key}=${t.value}`).join(','),
		'compat-tag=v2',
		'tags.getAllByDevice',
	);
	step('device.tags.remove');
	await tags.remove(uuid, 'compat-tag');
	expectEqual((await tags.getAllByDevice(uuid)).length, 0, 'tags after remove');

	// A missing device is the SDK's own not-found error, not a crash.
	step('device.get (missing)');
	try {
		await balena.models.device.get('f'.repeat(32));
		throw new Error('device.get of a missing uuid resolved');
	} catch (err) {
		expectEqual(err.code, 'BalenaDeviceNotFound', 'device.get(missing) error code');
	}
}

await runChecks(run, {
	passed: 'balena-sdk compat: all steps passed',
	failed: 'balena-sdk compat FAILED',
	details: (err) =>
		err?.statusCode == null ? undefined : `  HTTP ${err.statusCode}: ${JSON.stringify(err.body)}`,
});

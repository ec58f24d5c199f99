// What the compat scripts share: checks that print `ok - <what>` or throw a message naming the
// mismatch, the current step (set with `step(...)`), and `runChecks`, which runs the checks and
// exits 0 when every one passed or 1 with the step and the error at the first failure.

let currentStep = 'setup';

/** Names the step that the checks after this call belong to (shown when one fails). */
export function step(name) {
	currentStep = name;
}

export function expectEqual(actual, expected, what) {
	if (actual !== expected) {
		throw new Error(
			`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`,
		);
	}
	console.log(`ok - ${what}`);
}

export function expectTruthy(actual, what) {
	if (!actual) {
		throw new Error(`${what}: expected a value, got ${JSON.stringify(actual)}`);
	}
	console.log(`ok - ${what}`);
}

/**
 * Runs `run` and exits the process: 0 after printing `passed`, or 1 after printing
 * `<failed> at step "<step>": <error>` and then `details(err)` when it gives a line.
 */
export async function runChecks(run, { passed, failed, details = () => undefined }) {
	try {
		await run();
		console.log(passed);
		process.exit(0);
	} catch (err) {
		console.error(`${failed} at step "${currentStep}": ${err?.stack ?? err}`);
		const detail = details(err);
		if (detail !== undefined) {
			console.error(detail);
		}
		process.exit(1);
	}
}

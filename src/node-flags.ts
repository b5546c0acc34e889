/**
 * The Node options every tcab-backup process runs with in production, and why. They are set where each
 * process starts, since V8 reads them only then: the CLI's `#!` line (src/cli/main.ts, `env -S`), the agent's
 * systemd unit (infra/vm/tcab-backup-agent.service, ExecStart) and the function app's NODE_OPTIONS
 * (infra/modules/function-app.bicep). Tests check all three against this list (test/cli-process.test.ts,
 * test/infra/vm.test.ts, test/infra/template.test.ts), and the benchmark starts its CLI and agent processes
 * with it (bench/processes.ts), as production does.
 *
 * --max-semi-space-size=4: V8's young generation (where every new object starts) may otherwise grow to two
 * semi-spaces of 32 MB each in Node 24, and a job that streams hundreds of MB allocates fast enough to grow
 * it all the way; the young collections that then come rarely are also what frees the Buffers the job has
 * finished with. Measured on the first format-2 snapshot of a 1 GB database (every chunk to an empty folder
 * target, client and agent as their own processes, a busy 2-core machine), peak resident set with the
 * default, 8, 4 and 2 MB semi-spaces: client 185, 132, 137, 117 MB; agent 183, 159, 142, 144 MB. The
 * client's CPU time was 30.1 s with the default and 31.6 s with 4 MB, within the noise of that machine.
 * Nothing tcab-backup keeps is large in the young generation: the bytes it moves are Buffers, outside it.
 */
export const NODE_FLAGS: readonly string[] = ['--max-semi-space-size=4'];

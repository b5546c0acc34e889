/** What the CLI, the timer functions and the status document use of the Postgres jobs. */
export { isPgConfigured, loadPgCheckConfig, loadPgDrillConfig, type PgCheckConfig, type PgDrillConfig } from './config.js';
export { PgPolicyViolationError, runPgCheck, type PgCheckDeps, type PgCheckResult } from './check.js';
export { PgDrillError, runPgDrill, type PgDrillOptions, type PgDrillResult, type PgJobDeps } from './drill.js';
export { pgStatusSummary, type PgServerStatus } from './status.js';
export type { ArmClientOptions } from './arm.js';

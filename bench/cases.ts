/**
 * The benchmark's cases, in the order they run. Each is one module exporting a BenchCase (case.ts): it is
 * given the same options and a work folder of its own, measures, and returns its figures checked against
 * their targets. Adding a case is a module and a line here; nothing else changes. A case marked optIn runs
 * only when --case names it.
 */
import type { BenchCase } from './case.js';
import { format2Case } from './format2-case.js';
import { replicationCase } from './replication-case.js';
import { retentionCase } from './retention-case.js';
import { snapshotCase } from './snapshot-case.js';

export const CASES: readonly BenchCase[] = [snapshotCase, replicationCase, retentionCase, format2Case];

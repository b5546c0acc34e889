/**
 * The size of the fault matrix, stated: the cases run in fault-matrix-{snapshot,copies,restore,pg}.test.ts
 * (split so that they run in parallel), and the wire faults in fault-wire.test.ts. This file checks that the
 * tables cover every job and every kind of fault, and prints the count.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { casesOf, KINDS, matrixSize, SIZES, TABLES } from '../support/fault-matrix.js';
import { casesOfV2, matrixSizeV2, POSITIONS, TABLES_V2 } from '../support/fault-matrix-v2.js';

describe('fault matrix', () => {
  it('covers every job, every operation kind and every fault kind, at both sizes where the job streams artifacts', () => {
    const size = matrixSize();
    console.log(size.text);
    expect(TABLES.map((t) => t.job)).toEqual(['snapshot', 'replicate', 'prune', 'verify', 'drill', 'restore', 'pg drill']);
    const all = TABLES.flatMap(casesOf);
    expect(all).toHaveLength(size.total);
    expect(new Set(all.map((c) => c.row.op))).toEqual(new Set(['put', 'get', 'head', 'list', 'delete']));
    expect(new Set(all.map((c) => c.kind))).toEqual(new Set(Object.keys(KINDS)));
    expect(new Set(all.map((c) => c.row.at))).toEqual(new Set(['start', 'body', 'commit', 'page']));
    for (const t of TABLES) {
      if (t.sizes.length < Object.keys(SIZES).length)
        expect(t.sizeNote, `${t.job} runs at one size only and does not say why`).toBeTruthy();
    }
    // The README states the size; it must say what the tables hold.
    expect(readFileSync(new URL('../../README.md', import.meta.url), 'utf8')).toContain(`It is ${size.total} cases`);
    // Titles name the cases in test output: each must be unique within its job.
    for (const t of TABLES) expect(new Set(casesOf(t).map((c) => c.title)).size).toBe(casesOf(t).length);
  });

  it('has format-2 tables for every job (restore, replicate, verify, the chunk sweep, snapshot, drill), chunk operations at the first, a middle and the last of n', () => {
    const size = matrixSizeV2();
    console.log(
      `fault matrix, format 2: ${size.total} cases (${Object.entries(size.byJob)
        .map(([j, n]) => `${j} ${n}`)
        .join(', ')})`,
    );
    expect(TABLES_V2.map((t) => t.job)).toEqual([
      'restore v2',
      'replicate v2',
      'verify v2',
      'prune v2 sweep',
      'snapshot v2',
      'drill v2',
      'drill v2 (application)',
    ]);
    const all = TABLES_V2.flatMap(casesOfV2);
    expect(new Set(all.map((c) => c.row.op))).toEqual(new Set(['put', 'get', 'list', 'delete']));
    expect(new Set(all.map((c) => c.kind))).toEqual(new Set(Object.keys(KINDS)));
    for (const t of TABLES_V2) {
      const chunkRows = t.rows.filter((r) => r.positions);
      expect(chunkRows.length, `${t.job} has no row on chunk operation k of n`).toBeGreaterThan(0);
      for (const r of chunkRows) expect(r.positions).toEqual(POSITIONS);
      expect(new Set(casesOfV2(t).map((c) => c.title)).size).toBe(casesOfV2(t).length);
    }
    expect(readFileSync(new URL('../../README.md', import.meta.url), 'utf8')).toContain(`format 2 has ${size.total} cases`);
  });
});

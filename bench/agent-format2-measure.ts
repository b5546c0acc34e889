/**
 * The agent's side of format 2 against format 1, on the same sample database: a format-1 snapshot (zstd, as
 * the agent makes it by default) and a format-2 one (the chunking pass), each in a fresh agent process started
 * as on the VM, alternating, so each peak RSS is that mode's own. For format 2 it then reads the whole chunk
 * list and every chunk (chunk-data in requests of 15,000), which is what a first snapshot to an empty target
 * costs the agent. Figures: the agent's own timings (compressMs against chunkMs), the request's wall time,
 * the agent process's peak RSS (VmHWM) after the snapshot and after the chunk reads, and the zstd program's.
 *
 * Standalone: npm run build && node dist/bench/agent-format2-measure.js [--size 100MB] [--seed 1] [--rounds 2]
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { AgentClient } from '../src/agent/client.js';
import { startAgentProcess } from './agent-process.js';
import { prepareDatabase } from './database.js';
import type { TreePeaks } from './memory.js';

const BATCH = 15_000;

function sizeOf(text: string): number {
  const m = /^([0-9.]+)\s*(MB|GB|KB)?$/i.exec(text.trim());
  if (!m) throw new Error(`--size must be like 100MB or 1GB, not "${text}"`);
  const unit = (m[2] ?? 'MB').toUpperCase();
  return Number(m[1]) * (unit === 'GB' ? 1e9 : unit === 'KB' ? 1e3 : 1e6);
}

const mb = (bytes: number | undefined) => (bytes === undefined ? 'n/a' : `${(bytes / 2 ** 20).toFixed(1)} MiB`);

function peaks(p: TreePeaks): { agentHwm: number | undefined; zstdHwm: number | undefined } {
  const zstd = p.descendants.filter((d) => d.name === 'zstd').map((d) => d.peakHwmBytes);
  return { agentHwm: p.root?.peakHwmBytes, zstdHwm: zstd.length ? Math.max(...zstd) : undefined };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      size: { type: 'string', default: '100MB' },
      seed: { type: 'string', default: '1' },
      rounds: { type: 'string', default: '2' },
    },
  });
  const work = await mkdtemp(join(tmpdir(), 'tcab-format2-agent-'));
  try {
    const db = await prepareDatabase({ sizeBytes: sizeOf(values.size!), seed: Number(values.seed) }, work, (l) => console.error(l));
    console.error(`database: ${db.path}, ${db.facts.bytes} bytes, ${db.facts.runs} runs`);
    const rows: Array<Record<string, string | number>> = [];
    for (let round = 1; round <= Number(values.rounds); round++) {
      for (const format of [1, 2] as const) {
        const agent = await startAgentProcess({ dbPath: db.path, stagingDir: join(work, `staging-${round}-${format}`) });
        try {
          const client = new AgentClient({ url: agent.url, keyId: agent.keyId, key: agent.key });
          const t0 = performance.now();
          const desc = format === 2 ? await client.createSnapshot({ format: 2 }) : await client.createSnapshot({ compression: 'zstd' });
          const requestMs = performance.now() - t0;
          const afterSnapshot = peaks(agent.memory());
          const row: Record<string, string | number> = {
            round,
            format,
            bytes: desc.snapshot.bytes,
            vacuumMs: desc.timings.vacuumMs ?? 0,
            checkMs: desc.timings.checkMs ?? 0,
            passMs: (format === 2 ? desc.timings.chunkMs : desc.timings.compressMs) ?? 0,
            requestMs: Math.round(requestMs),
            agentPeakAfterSnapshot: mb(afterSnapshot.agentHwm),
            zstdPeak: mb(afterSnapshot.zstdHwm),
          };
          if ('artifact' in desc) row.storedBytes = desc.artifact.bytes;
          if ('format' in desc && desc.format === 2) {
            const t1 = performance.now();
            const hashes: string[] = [];
            for await (const e of client.chunkList(desc.id)) hashes.push(e.sha256);
            const listMs = performance.now() - t1;
            let stored = 0;
            for (let i = 0; i < hashes.length; i += BATCH) {
              for await (const r of client.chunkData(desc.id, hashes.slice(i, i + BATCH))) stored += r.frame.length;
            }
            row.chunks = hashes.length;
            row.listMs = Math.round(listMs);
            row.allChunkDataMs = Math.round(performance.now() - t1 - listMs);
            row.storedBytes = stored;
            row.agentPeakAfterChunkData = mb(peaks(agent.memory()).agentHwm);
          }
          await client.deleteSnapshot(desc.id);
          rows.push(row);
          console.error(JSON.stringify(row));
        } finally {
          await agent.stop();
        }
      }
    }
    console.log(JSON.stringify(rows, null, 1));
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});

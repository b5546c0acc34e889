/**
 * `tcab-backup list [--target NAME] [--json]`: the snapshots (and objects without a manifest) on each target.
 * Exit status 1 when a target could not be listed; the others are still shown.
 */
import { listCatalog, readManifests } from '../../catalog/catalog.js';
import { PIN_TAG, storedBytes, storedCompression } from '../../catalog/manifest.js';
import { loadTargetsConfig } from '../../config.js';
import { errorMessage } from '../../errors.js';
import { openTargets } from '../../runtime.js';
import { formatBytes } from '../../util/format.js';
import { interruptSignal as interruptible, parse, printJson, type Command } from '../command.js';
import { table } from '../output.js';

export const listCommand: Command = async (args, ctx) => {
  const { values } = parse(args, { target: { type: 'string' }, json: { type: 'boolean' } });
  const config = loadTargetsConfig(ctx.env);
  const targets = openTargets(config, ctx.logger, values.target);
  const signal = interruptible();
  const out = await Promise.all(
    targets.map(async (target) => {
      try {
        const listing = await listCatalog(target, config.database, { signal });
        const manifests = await readManifests(
          target,
          config.database,
          listing.snapshots.map((s) => s.id),
          { signal },
        );
        return {
          name: target.name,
          url: target.url,
          ok: true,
          snapshots: manifests.map(({ id, manifest, error }) =>
            manifest
              ? {
                  id,
                  createdAt: manifest.createdAt,
                  trigger: manifest.trigger,
                  tags: manifest.tags,
                  pinned: manifest.tags.includes(PIN_TAG),
                  formatVersion: manifest.formatVersion,
                  bytes: manifest.snapshot.bytes,
                  // Format 2: the sum of its chunks, shared with other snapshots (what a restore downloads).
                  artifactBytes: storedBytes(manifest),
                  compression: storedCompression(manifest),
                  // The data object's: the artifact, or format 2's chunk list.
                  sha256: manifest.formatVersion === 1 ? manifest.artifact.sha256 : manifest.chunkList.sha256,
                  tables: manifest.database.tables,
                  key: manifest.formatVersion === 1 ? manifest.key : manifest.chunkList.key,
                }
              : { id, error: error?.message ?? 'unreadable manifest' },
          ),
          orphans: listing.orphans.map((o) => ({ key: o.key, bytes: o.size, lastModified: o.lastModified.toISOString() })),
        };
      } catch (e) {
        return { name: target.name, url: target.url, ok: false, error: errorMessage(e), snapshots: [], orphans: [] };
      }
    }),
  );
  if (values.json) printJson(ctx, { database: config.database, targets: out });
  else {
    for (const t of out) {
      ctx.io.stdout.write(
        `target ${t.name} (${t.url}): ${t.ok ? `${t.snapshots.length} snapshot(s)` : `ERROR ${t.error}`}${t.orphans.length ? `, ${t.orphans.length} object(s) without manifest` : ''}\n`,
      );
      const rows = [['ID', 'CREATED (UTC)', 'SIZE', 'STORED', 'TRIGGER', 'TAGS']];
      for (const s of t.snapshots) {
        if ('error' in s) rows.push([s.id, '-', '-', '-', '-', `ERROR ${s.error}`]);
        else
          rows.push([
            s.id,
            s.createdAt.replace('T', ' ').replace(/\.\d+Z$/, 'Z'),
            formatBytes(s.bytes),
            `${formatBytes(s.artifactBytes)} ${s.compression}`,
            s.trigger.kind + (s.trigger.reason ? `: ${s.trigger.reason}` : ''),
            s.tags.join(','),
          ]);
      }
      if (t.snapshots.length) ctx.io.stdout.write(table(rows).replace(/^/gm, '  ') + '\n');
    }
  }
  return out.every((t) => t.ok) ? 0 : 1;
};

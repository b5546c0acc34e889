/**
 * The sweeper: deletes drill servers past the maximum age, whatever happened to the drill that made them
 * (a crashed function, a lost record). It looks only in the resource groups of the configured servers,
 * and deletes a server only when deleteRefusal() finds nothing against it. It starts deletions and does
 * not wait for them: the next tick sees the server Dropping, then gone.
 */
import type { Server } from '@azure/arm-postgresql-flexible';
import { errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import { formatDuration } from '../util/duration.js';
import { armHint, describeArmFailure, isArmNotFound, type ArmClientFactory } from './arm.js';
import { DRILL_SOURCE_TAG, deleteRefusal, drillServerCreatedAt } from './drill-server.js';
import { sameResourceId, type ServerRef } from './resource-id.js';

export interface SweepResult {
  deleted: { server: string; resourceGroup: string; ageMs: number }[];
  kept: { server: string; resourceGroup: string; reason: string }[];
  errors: string[];
}

export async function sweepDrillServers(args: {
  sources: ServerRef[];
  maxAgeMs: number;
  clientFor: ArmClientFactory;
  logger: Logger;
  now: Date;
  signal?: AbortSignal;
}): Promise<SweepResult> {
  const result: SweepResult = { deleted: [], kept: [], errors: [] };
  const groups = new Map<string, ServerRef[]>();
  for (const s of args.sources) {
    const key = `${s.subscriptionId}/${s.resourceGroup.toLowerCase()}`;
    groups.set(key, [...(groups.get(key) ?? []), s]);
  }
  for (const sourcesHere of groups.values()) {
    const { subscriptionId, resourceGroup } = sourcesHere[0]!;
    const client = args.clientFor(subscriptionId);
    const servers: Server[] = [];
    try {
      for await (const s of client.servers.listByResourceGroup(resourceGroup, { abortSignal: args.signal })) servers.push(s);
    } catch (e) {
      result.errors.push(
        `Listing servers of resource group "${resourceGroup}" to sweep drill servers failed: ${describeArmFailure(e)}. Check: ${armHint(e, { resourceGroup, role: 'Reader' })}`,
      );
      continue;
    }
    for (const server of servers) {
      const name = server.name ?? '(unnamed)';
      const keep = (reason: string) => result.kept.push({ server: name, resourceGroup, reason });
      const source = sourcesHere.find((s) => sameResourceId(s.id, server.tags?.[DRILL_SOURCE_TAG])) ?? sourcesHere[0]!;
      const refusal = deleteRefusal(server, source, args.sources);
      if (refusal) {
        keep(refusal);
        continue;
      }
      const createdAt = drillServerCreatedAt(server);
      if (!createdAt) {
        keep(`drill server "${name}" has no creation time (tag or ARM system data), so its age is unknown`);
        continue;
      }
      const ageMs = args.now.getTime() - createdAt.getTime();
      if (ageMs <= args.maxAgeMs) {
        keep(
          `drill server "${name}" is ${formatDuration(ageMs)} old, younger than TCAB_BACKUP_PG_DRILL_MAX_AGE (${formatDuration(args.maxAgeMs)})`,
        );
        continue;
      }
      if (server.state?.toLowerCase() === 'dropping') {
        keep(`drill server "${name}" is already being deleted`);
        continue;
      }
      try {
        await client.servers.beginDelete(resourceGroup, name, { abortSignal: args.signal });
        result.deleted.push({ server: name, resourceGroup, ageMs });
        args.logger.warn('pg.sweep.deleted', { server: name, resourceGroup, ageMs, source: source.name });
      } catch (e) {
        if (isArmNotFound(e)) continue;
        result.errors.push(
          `Deleting drill server "${name}" (resource group "${resourceGroup}", ${formatDuration(ageMs)} old) failed: ${describeArmFailure(e) || errorMessage(e)}. Check: ${armHint(e, { resourceGroup, role: 'Contributor' })}`,
        );
      }
    }
  }
  return result;
}

/** `tcab-backup retention plan`: a retention policy applied to snapshots read as JSON on stdin (no safety rails). */
import { text } from 'node:stream/consumers';
import { runRetentionPlanCommand } from '../../retention/plan-command.js';
import { parse, UsageError, type Command } from '../command.js';

export const retentionCommand: Command = async (args, ctx) => {
  const { positionals } = parse(args, {}, true);
  if (positionals.join(' ') !== 'plan') throw new UsageError('retention takes one subcommand: plan (reads JSON on stdin)');
  ctx.io.stdout.write(runRetentionPlanCommand(await text(ctx.io.stdin)) + '\n');
  return 0;
};

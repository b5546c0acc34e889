/** `tcab-backup agent`: runs the snapshot agent in this process (TCAB_AGENT_* settings) until SIGINT or SIGTERM. */
import { startAgent } from '../../agent/run.js';
import { loadAgentConfig } from '../../agent/config.js';
import { parse, type Command } from '../command.js';

export const agentCommand: Command = async (args, ctx) => {
  parse(args, {});
  const running = await startAgent(loadAgentConfig(ctx.env), { logger: ctx.logger });
  ctx.logger.info('agent.listening', { url: running.url });
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await running.close();
  return 0;
};

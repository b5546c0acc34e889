/**
 * Peak memory of a process and of every process it starts, read from Linux's /proc while they run.
 *
 * VmHWM is the kernel's own high-water mark of a process's resident set, so a poll that misses a short spike
 * still sees it on the next read; VmRSS is sampled too, as a cross-check. A process's figures are the last
 * ones read before it exited. Descendants are found through /proc/<pid>/task/<tid>/children (every thread
 * may start children: Node spawns from its main thread, but a worker could too).
 */
import { readdirSync, readFileSync } from 'node:fs';

export interface ProcessPeak {
  pid: number;
  /** The kernel's command name (e.g. "node", "zstd"). */
  name: string;
  /** The command line, shortened (e.g. "zstd -1 -c -q"). */
  command: string;
  /** Highest VmHWM seen, in bytes. */
  peakHwmBytes: number;
  /** Highest VmRSS seen, in bytes. */
  peakRssBytes: number;
}

export interface TreePeaks {
  root: ProcessPeak | undefined;
  /** Every descendant seen, in the order first seen. */
  descendants: ProcessPeak[];
  polls: number;
}

interface StatusFields {
  name: string;
  command: string;
  hwm: number;
  rss: number;
}

function readCommand(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean).join(' ').slice(0, 200);
  } catch {
    return undefined;
  }
}

function readStatus(pid: number): StatusFields | undefined {
  // The command line is read before and after the figures: if the process exec'd in between, the figures may
  // belong to either program, and this reading is skipped.
  const before = readCommand(pid);
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return undefined;
  }
  const command = readCommand(pid);
  // A zombie has no memory fields left; its last live reading stands.
  if (before === undefined || command !== before || !/^VmHWM:/m.test(text)) return undefined;
  const field = (key: string) => {
    const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text);
    return m ? Number(m[1]) * 1024 : 0;
  };
  return { name: /^Name:\s+(.*)$/m.exec(text)?.[1] ?? '?', command: before, hwm: field('VmHWM'), rss: field('VmRSS') };
}

function childrenOf(pid: number): number[] {
  let tasks: string[];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return [];
  }
  const out: number[] = [];
  for (const tid of tasks) {
    try {
      for (const child of readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').split(/\s+/)) if (child) out.push(Number(child));
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return out;
}

/** True when this kernel exposes what the watcher reads; the benchmark refuses to report memory otherwise. */
export function canWatchMemory(): boolean {
  try {
    const tid = readdirSync(`/proc/${process.pid}/task`)[0];
    readFileSync(`/proc/${process.pid}/task/${tid}/children`);
    return readStatus(process.pid) !== undefined;
  } catch {
    return false;
  }
}

export class ProcessTreeWatcher {
  private readonly peaks = new Map<number, ProcessPeak>();
  private readonly timer: NodeJS.Timeout;
  private polls = 0;

  constructor(
    private readonly rootPid: number,
    intervalMs = 20,
  ) {
    this.poll();
    this.timer = setInterval(() => this.poll(), intervalMs);
  }

  /** One more reading now (call it right before stopping a process, to catch its final high-water mark). */
  poll(): void {
    this.polls++;
    const seen = new Set<number>();
    const visit = (pid: number) => {
      if (seen.has(pid)) return;
      seen.add(pid);
      const status = readStatus(pid);
      if (status) {
        let peak = this.peaks.get(pid);
        // A child is forked first (and until it execs, shows its parent's memory and command line), then execs its
        // program, whose memory starts afresh: readings taken before the command line changed are dropped.
        if (!peak || peak.command !== status.command)
          peak = { pid, name: status.name, command: status.command, peakHwmBytes: 0, peakRssBytes: 0 };
        peak.peakHwmBytes = Math.max(peak.peakHwmBytes, status.hwm);
        peak.peakRssBytes = Math.max(peak.peakRssBytes, status.rss);
        this.peaks.set(pid, peak);
      }
      for (const child of childrenOf(pid)) visit(child);
    };
    visit(this.rootPid);
  }

  stop(): TreePeaks {
    clearInterval(this.timer);
    return this.result();
  }

  result(): TreePeaks {
    const root = this.peaks.get(this.rootPid);
    const descendants = [...this.peaks.values()].filter((p) => p.pid !== this.rootPid).map((p) => ({ ...p }));
    return { root: root && { ...root }, descendants, polls: this.polls };
  }
}

/** The largest peak among descendants with this command name, and how many there were. */
export function peakByName(
  peaks: readonly ProcessPeak[],
): Array<{ name: string; processes: number; peakHwmBytes: number; peakRssBytes: number }> {
  const byName = new Map<string, { name: string; processes: number; peakHwmBytes: number; peakRssBytes: number }>();
  for (const p of peaks) {
    const entry = byName.get(p.name) ?? { name: p.name, processes: 0, peakHwmBytes: 0, peakRssBytes: 0 };
    entry.processes++;
    entry.peakHwmBytes = Math.max(entry.peakHwmBytes, p.peakHwmBytes);
    entry.peakRssBytes = Math.max(entry.peakRssBytes, p.peakRssBytes);
    byName.set(p.name, entry);
  }
  return [...byName.values()];
}

// The text form of an escalation policy (engine/policy.go), parsed and
// composed in the page so that the builder and the timeline show what the
// server will do. The server parses it again and has the last word.
//
//	inapp,sms@5m,voice@15m until=confirmed
//	inapp, sms@1s*3/10s until=read        (SMS at 1s, 11s, 21s)

export type Channel = "inapp" | "push" | "sms" | "voice" | "email";
export const channels: Channel[] = ["inapp", "push", "sms", "voice", "email"];

export interface Step {
  channel: Channel;
  after: number; // seconds after the DING is sent
  times: number; // sends in all (1: no repeat)
  every: number; // seconds between repeats
}

export interface Policy {
  steps: Step[];
  until: "confirmed" | "read";
}

export const maxSends = 32; // engine.MaxPolicySteps
export const maxSpan = 7 * 24 * 3600; // engine.MaxPolicySpan, seconds

const unit: Record<string, number> = { h: 3600, m: 60, s: 1, ms: 0.001 };

/** Parses a Go duration ("1h30m", "5m", "10s", "0s") into seconds. */
export function parseDuration(s: string): number {
  if (s === "0") return 0;
  const re = /(\d+(?:\.\d+)?)(h|ms|m|s)/gy;
  let total = 0;
  let n = 0;
  let m: RegExpExecArray | null;
  while ((m = re.exec(s)) !== null) {
    total += parseFloat(m[1]) * unit[m[2]];
    n = re.lastIndex;
  }
  if (n === 0 || n !== s.length) throw new Error(`bad duration ${JSON.stringify(s)}`);
  return total;
}

/** Formats seconds the way the server does (engine shortDuration): 5m, 1h30m, 10s. */
export function formatDuration(sec: number): string {
  if (sec === 0) return "0s";
  const h = Math.floor(sec / 3600);
  const m = Math.floor((sec % 3600) / 60);
  const s = sec % 60;
  let out = "";
  if (h) out += `${h}h`;
  if (m || (h && s)) out += `${m}m`;
  if (s) out += `${s}s`;
  return out;
}

/** Parses the policy text; throws an Error that says what is wrong. */
export function parsePolicy(spec: string): Policy {
  const p: Policy = { steps: [], until: "confirmed" };
  for (const f of spec.split(/[,\s;]+/).filter(Boolean)) {
    if (f.startsWith("until=")) {
      const v = f.slice(6);
      if (v === "read") p.until = "read";
      else if (v === "confirmed" || v === "confirm") p.until = "confirmed";
      else throw new Error(`until=${v}: want read or confirmed`);
      continue;
    }
    const [rest, rep] = f.split("*", 2) as [string, string | undefined];
    const [ch, delay] = rest.split("@", 2) as [string, string | undefined];
    if (!channels.includes(ch as Channel)) throw new Error(`step ${JSON.stringify(f)}: unknown channel ${JSON.stringify(ch)}`);
    const step: Step = { channel: ch as Channel, after: 0, times: 1, every: 0 };
    if (delay !== undefined) step.after = stepDuration(f, delay);
    if (rep !== undefined) {
      const [n, every] = rep.split("/", 2);
      const times = Number(n);
      if (!Number.isInteger(times) || times < 1 || every === undefined) {
        throw new Error(`step ${JSON.stringify(f)}: repeat is *times/every, e.g. *3/10m`);
      }
      step.times = times;
      step.every = stepDuration(f, every);
    }
    p.steps.push(step);
  }
  validate(p);
  return p;
}

function stepDuration(step: string, d: string): number {
  let s: number;
  try {
    s = parseDuration(d);
  } catch {
    throw new Error(`step ${JSON.stringify(step)}: bad delay ${JSON.stringify(d)}`);
  }
  if (!Number.isInteger(s)) throw new Error(`step ${JSON.stringify(step)}: delays are whole seconds`);
  return s;
}

/** Throws if the server would refuse p (engine Policy.Validate). */
export function validate(p: Policy): void {
  if (p.steps.length === 0) throw new Error("a policy needs at least one step");
  let n = 0;
  for (const s of p.steps) {
    if (s.times > 1 && s.every < 1) throw new Error("a repeated step needs an interval of at least 1s");
    n += s.times;
    if (n > maxSends) throw new Error(`more than ${maxSends} sends`);
    if (s.after + (s.times - 1) * s.every > maxSpan) throw new Error("a step later than 7 days");
  }
}

/** Composes the text form (the server's own String form). */
export function composePolicy(p: Policy): string {
  const steps = p.steps.map((s) => {
    let t: string = s.channel;
    if (s.after > 0) t += "@" + formatDuration(s.after);
    if (s.times > 1) t += `*${s.times}/${formatDuration(s.every)}`;
    return t;
  });
  return steps.join(",") + " until=" + p.until;
}

export interface Send {
  channel: Channel;
  at: number; // seconds after the DING is sent
}

/** Every send of the policy in time order (repeats expanded; steps with the same time keep their order). */
export function plan(p: Policy): Send[] {
  const out: Send[] = [];
  for (const s of p.steps) {
    for (let i = 0; i < s.times; i++) out.push({ channel: s.channel, at: s.after + i * s.every });
  }
  return out.map((s, i) => ({ s, i })).sort((a, b) => a.s.at - b.s.at || a.i - b.i).map((x) => x.s);
}

// A reader of the Prometheus text exposition format, enough for the
// Operations screen: samples with their labels, and histogram quantiles.

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses Prometheus text format into samples (comments and blank lines skipped). */
export function parseMetrics(text: string): Sample[] {
  const out: Sample[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    if (m[3]) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
      let l: RegExpExecArray | null;
      while ((l = re.exec(m[3])) !== null) labels[l[1]] = l[2].replace(/\\n/g, "\n").replace(/\\(.)/g, "$1");
    }
    const v = m[4] === "+Inf" ? Infinity : m[4] === "-Inf" ? -Infinity : Number(m[4]);
    out.push({ name: m[1], labels, value: v });
  }
  return out;
}

/** The sum of the samples named name (whose labels include match). */
export function sum(samples: Sample[], name: string, match: Record<string, string> = {}): number {
  let t = 0;
  for (const s of samples) {
    if (s.name !== name) continue;
    if (Object.entries(match).every(([k, v]) => s.labels[k] === v)) t += s.value;
  }
  return t;
}

/** Whether any sample is named name. */
export function has(samples: Sample[], name: string): boolean {
  return samples.some((s) => s.name === name);
}

/**
 * The q-quantile (0..1) of histogram name from its cumulative buckets,
 * interpolated linearly within a bucket as Prometheus' histogram_quantile
 * does; NaN when the histogram is empty.
 */
export function quantile(samples: Sample[], name: string, q: number): number {
  const buckets = new Map<number, number>();
  for (const s of samples) {
    if (s.name !== name + "_bucket") continue;
    const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
    buckets.set(le, (buckets.get(le) ?? 0) + s.value);
  }
  const bs = [...buckets.entries()].sort((a, b) => a[0] - b[0]);
  if (bs.length === 0) return NaN;
  const total = bs[bs.length - 1][1];
  if (total === 0) return NaN;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const [le, count] of bs) {
    if (count >= rank) {
      if (le === Infinity) return prevLe;
      if (count === prevCount) return le;
      return prevLe + ((le - prevLe) * (rank - prevCount)) / (count - prevCount);
    }
    prevLe = le;
    prevCount = count;
  }
  return prevLe;
}

/**
 * Backoff gives reconnect delays as the Go client does (PROTOCOL.md §10):
 * a random delay in [b/2, b], b starting at min and doubling up to max;
 * reset() after a successful handshake brings b back to min.
 */
export class Backoff {
  private b: number;
  constructor(
    readonly min = 50,
    readonly max = 5000,
    private readonly random: () => number = Math.random,
  ) {
    this.b = min;
  }

  /** The next delay in ms; each call doubles the bound for the one after. */
  next(): number {
    const b = this.b;
    this.b = Math.min(this.b * 2, this.max);
    return b / 2 + this.random() * (b / 2);
  }

  reset(): void {
    this.b = this.min;
  }
}

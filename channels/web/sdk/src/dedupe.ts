/**
 * StreamPosition is the effectively-once recipe of PROTOCOL.md §5 for one
 * stream: `last` is the seq of the last entry handed to the application;
 * an entry at or below it is a repeat and is dropped.
 */
export class StreamPosition {
  /** The last seq processed; undefined until known (no cursor given and no WELCOME yet). */
  last: bigint | undefined;

  constructor(cursor?: bigint) {
    this.last = cursor;
  }

  /**
   * Applies a WELCOME's resume_from: without a cursor, the stream starts
   * just before it; a cursor at or above it was clamped by the server (a
   * restored backup), so seqs from resume_from on are new. A resume_from
   * above last+1 means retention deleted entries: last is kept.
   */
  welcome(resumeFrom: bigint): void {
    if (resumeFrom < 1n) resumeFrom = 1n; // seqs start at 1
    if (this.last === undefined || resumeFrom <= this.last) this.last = resumeFrom - 1n;
  }

  /** Says whether the entry at seq is new, and if so makes it the last. */
  accept(seq: bigint): boolean {
    if (this.last !== undefined && seq <= this.last) return false;
    this.last = seq;
    return true;
  }
}

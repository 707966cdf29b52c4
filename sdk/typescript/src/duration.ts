/** Durations as strings with their unit ("500ms", "30s", "5m", "2h"), so none is ambiguous. */

export type Duration = `${number}ms` | `${number}s` | `${number}m` | `${number}h`;

const UNIT_MS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 };
const PATTERN = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/;

/** Milliseconds in `value`; throws a clear error on anything but `<number><unit>`. */
export function toMs(value: Duration | string, what = "duration"): number {
  const match = PATTERN.exec(String(value).trim());
  if (!match) {
    throw new TypeError(`${what} must look like "500ms", "30s", "5m" or "2h"; got ${JSON.stringify(value)}`);
  }
  return Number(match[1]) * (UNIT_MS[match[2] as string] as number);
}

export function toSeconds(value: Duration | string, what?: string): number {
  return toMs(value, what) / 1000;
}

/**
 * How the CLI shows numbers (human-readable by default, exact with --raw or --json) and how it
 * validates numeric options: a bad value exits 2 naming the option and the value as typed.
 */
import type { Argv } from "yargs";

const IEC = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
const SI = ["", "k", "M", "G", "T", "P"];

/** 1536 -> "1.5 KiB"; below 1024 the exact count ("512 B"). */
export function humanBytes(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  let i = 0;
  let v = Math.abs(n);
  while (v >= 1024 && i < IEC.length - 1) {
    v /= 1024;
    i++;
  }
  const sign = n < 0 ? "-" : "";
  return i === 0 ? `${n} B` : `${sign}${v < 10 ? v.toFixed(1) : Math.round(v)} ${IEC[i]}`;
}

/** 1234567 -> "1.2M"; below 1000 the exact count. */
export function humanCount(n: number): string {
  if (!Number.isFinite(n) || !Number.isInteger(n)) return humanFraction(n);
  let i = 0;
  let v = Math.abs(n);
  while (v >= 1000 && i < SI.length - 1) {
    v /= 1000;
    i++;
  }
  const sign = n < 0 ? "-" : "";
  return i === 0 ? String(n) : `${sign}${v < 10 ? v.toFixed(1) : Math.round(v)}${SI[i]}`;
}

function humanFraction(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  return Math.abs(n) >= 100 ? n.toFixed(0) : Math.abs(n) >= 1 ? n.toFixed(2) : n.toPrecision(2);
}

/** 3725 -> "1h2m5s"; 59 -> "59s"; 90061 -> "1d1h1m1s" (the units --*-timeout accepts). */
export function humanSeconds(s: number): string {
  if (!Number.isFinite(s) || s < 0) return String(s);
  let r = Math.floor(s);
  const parts: string[] = [];
  for (const [u, n] of [
    ["d", 86400],
    ["h", 3600],
    ["m", 60],
  ] as const) {
    if (r >= n) {
      parts.push(`${Math.floor(r / n)}${u}`);
      r %= n;
    }
  }
  if (r > 0 || parts.length === 0) parts.push(`${r}s`);
  return parts.join("");
}

/** A counter by its name's unit: *Bytes/bytes* as bytes, *Seconds as seconds, else a count. */
export function humanByName(name: string, v: number): string {
  if (/bytes/i.test(name)) return humanBytes(v);
  if (/seconds$/i.test(name))
    return Number.isInteger(v) ? humanSeconds(v) : `${humanFraction(v)} s`;
  return humanCount(v);
}

// ---------------------------------------------------------------- numeric options

let rawArgs: readonly string[] = [];

/** The command line as typed (main() sets it), so errors quote a value as the user wrote it. */
export function setRawArgs(args: readonly string[]): void {
  rawArgs = args;
}

/** The last value given to --name on the command line, as typed. */
export function rawValue(name: string): string | undefined {
  let v: string | undefined;
  for (let i = 0; i < rawArgs.length; i++) {
    const a = rawArgs[i] ?? "";
    if (a === `--${name}`) v = rawArgs[i + 1];
    else if (a.startsWith(`--${name}=`)) v = a.slice(name.length + 3);
  }
  return v;
}

export interface NumberSpec {
  describe: string;
  min?: number;
  max?: number;
  default?: number;
}

/**
 * A numeric option: typed as a number (shown as [number] in --help), an integer within
 * min..max; anything else exits 2 with `invalid --name "abc": expected an integer min..max`.
 */
export function numberOption(y: Argv, name: string, spec: NumberSpec): Argv {
  const lo = spec.min ?? 0;
  const hi = spec.max ?? Number.MAX_SAFE_INTEGER;
  return y
    .option(name, {
      type: "number",
      describe: spec.describe,
      requiresArg: true,
      ...(spec.default === undefined ? {} : { default: spec.default }),
    })
    .check((argv) => {
      const v = argv[name];
      if (v === undefined) return true;
      const n = Array.isArray(v) ? Number.NaN : Number(v);
      if (Number.isInteger(n) && n >= lo && n <= hi) return true;
      const text = rawValue(name) ?? String(v);
      const range = hi === Number.MAX_SAFE_INTEGER ? `>= ${lo}` : `${lo}..${hi}`;
      return `invalid --${name} "${text}": expected an integer ${range}`;
    }, false);
}

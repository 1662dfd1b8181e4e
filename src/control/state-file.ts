/**
 * The daemon's small JSON state files (the plumbing's undo journal, the guard's record): written
 * whole through a temporary file and a rename, so a reader (the next start, `tunnat down`) sees
 * the old content or the new one, never half of either. 0600 in a directory created 0700.
 */
import { mkdirSync, renameSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";

export function writeJsonAtomic(file: string, value: unknown): void {
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(value), { mode: 0o600 });
  renameSync(tmp, file);
}

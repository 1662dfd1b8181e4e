/**
 * Where the installed package lives: the nearest folder above this module that holds both
 * package.json and binding.gyp (both are shipped; see "files" in package.json). The addon
 * (build/Release), the CLI (bin/, lab/) and `--version` are found from it. Lives in io, the lowest
 * layer that needs it (the addon's path); the CLI imports it from here.
 */
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** The package root, or undefined when this module is not inside the tunnat package. */
export function packageRoot(): string | undefined {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, "package.json")) && existsSync(join(dir, "binding.gyp"))) return dir;
    const up = dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  return undefined;
}

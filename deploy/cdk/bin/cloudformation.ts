/** Writes cloudformation/tunnat-nat.yaml from the construct (npm run synth:cfn). */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { cloudFormationYaml } from "../src/cloudformation.js";

const out = join(__dirname, "..", "..", "cloudformation", "tunnat-nat.yaml");
writeFileSync(out, cloudFormationYaml());
console.log(`wrote ${out}`);

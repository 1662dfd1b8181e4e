import t from "tap";
import { runProperties } from "../helpers/properties.js";

const runs = Number(process.env.TUNNAT_FUZZ_RUNS ?? 200_000);
const seed = Number(process.env.TUNNAT_FUZZ_SEED ?? Date.now() % 0xffffffff);
t.test(`long property run: ${runs} packets from seed ${seed}`, async (t) => {
  runProperties(t, seed, runs);
});

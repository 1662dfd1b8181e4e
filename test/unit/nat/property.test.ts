import t from "tap";
import { runProperties } from "../../helpers/properties.js";

// A bounded run in the normal suite; `npm run fuzz` runs the same properties much longer.
for (const seed of [1, 2, 3, 0xdecafbad]) {
  t.test(
    `random and mutated packets never throw and emit only valid checksums (seed ${seed})`,
    async (t) => {
      runProperties(t, seed, 3000);
    },
  );
}

// The layering of src/ (docs/architecture.md §Layers), checked in CI by `npm run lint:deps`.
// Layers, lowest first: base -> wire -> conntrack -> nat -> datapath, and io; then control -> cli.
// A layer imports only layers below it; io (packet I/O) imports base and wire only.
// Type-only imports count: a type is a dependency of the design even though it is erased.

/** Everything in src/ outside the folders named (a regex for dependency-cruiser's paths). */
const outside = (...folders) => `^src/(?!(${folders.join("|")})/)`;

module.exports = {
  forbidden: [
    {
      name: "no-circular",
      comment: "An import circle in src/ means two modules are one layer: split or merge them.",
      severity: "error",
      from: { path: "^src/" },
      to: { circular: true },
    },
    {
      name: "base-imports-nothing",
      comment: "src/base is shared vocabulary (clock, protocols, error codes): it imports no src/.",
      severity: "error",
      from: { path: "^src/base/" },
      to: { path: outside("base") },
    },
    {
      name: "wire-only-base",
      comment: "src/wire parses and writes packet bytes: it may use base only.",
      severity: "error",
      from: { path: "^src/wire/" },
      to: { path: outside("base", "wire") },
    },
    {
      name: "conntrack-only-base-wire",
      comment: "src/conntrack reports outcomes; nat decides and counts. It must not import nat.",
      severity: "error",
      from: { path: "^src/conntrack/" },
      to: { path: outside("base", "wire", "conntrack") },
    },
    {
      name: "nat-only-base-wire-conntrack",
      comment: "src/nat translates packets with the table it is handed.",
      severity: "error",
      from: { path: "^src/nat/" },
      to: { path: outside("base", "wire", "conntrack", "nat") },
    },
    {
      name: "datapath-below-io",
      comment:
        "src/datapath drives the batches below io, control and cli. It is handed a Device and may " +
        "name that interface (io/device.ts) as a type, nothing else of io.",
      severity: "error",
      from: { path: "^src/datapath/" },
      to: {
        path: outside("base", "wire", "conntrack", "nat", "datapath"),
        pathNot: "^src/io/device\\.ts$",
      },
    },
    {
      name: "datapath-device-type-only",
      comment: "The Device interface is named as a type only: datapath loads no I/O code.",
      severity: "error",
      from: { path: "^src/datapath/" },
      to: { path: "^src/io/device\\.ts$", dependencyTypesNot: ["type-only"] },
    },
    {
      name: "io-only-base-wire",
      comment: "src/io (TUN, memory device, addon) may use base and wire only.",
      severity: "error",
      from: { path: "^src/io/" },
      to: { path: outside("base", "wire", "io") },
    },
    {
      name: "control-not-cli",
      comment: "src/control is the daemon; the command line sits above it.",
      severity: "error",
      from: { path: "^src/control/" },
      to: { path: "^src/cli/" },
    },
    {
      name: "nothing-imports-test",
      comment: "Tests import the code, never the other way round.",
      severity: "error",
      from: { pathNot: "^test/" },
      to: { path: "^test/" },
    },
    {
      name: "no-unresolvable",
      comment: "An import that resolves to nothing is a typo or a missing dependency.",
      severity: "error",
      from: {},
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: "node_modules" },
    exclude: { path: "^(dist|build|node_modules)/" },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: "tsconfig.json" },
    enhancedResolveOptions: {
      exportsFields: ["exports"],
      conditionNames: ["import", "require", "node", "default", "types"],
      extensions: [".ts", ".js", ".cjs", ".mjs", ".json", ".node"],
    },
  },
};

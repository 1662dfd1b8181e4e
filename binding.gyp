# The tunnat packet I/O addon (native/, see native-notes/README.md).
# Built by `npm install` / `npm ci` (npm runs `node-gyp rebuild` when this file exists and
# package.json has no install script). Warnings are errors when CI is set.
{
  "variables": {
    "tunnat_werror%": "<!(node -p \"process.env.CI ? 'true' : 'false'\")"
  },
  "targets": [
    {
      "target_name": "tunnat_tun",
      "sources": ["native/tun.cc", "native/notify.cc", "native/mq.cc"],
      "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api"],
      "cflags": ["-Wall", "-Wextra", "-pthread"],
      "ldflags": ["-pthread"],
      "defines": ["NAPI_VERSION=8"],
      "conditions": [
        ["OS!='linux'", {"type": "none", "sources!": ["native/tun.cc", "native/notify.cc", "native/mq.cc"]}],
        ["tunnat_werror=='true'", {"cflags": ["-Werror"], "cflags_cc": ["-Werror"]}]
      ]
    }
  ]
}

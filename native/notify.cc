// sd_notify(3) for tunnat (native-notes/README.md "systemd notifications").
//
// Node has no AF_UNIX datagram sockets, and systemd's notification socket is one. This file
// sends one datagram to the socket NOTIFY_SOCKET names and nothing more: which messages to
// send and when (READY=1, WATCHDOG=1, ...) is decided in src/control/systemd.ts, reading the
// environment in src/io/notify.ts. Like the rest of the addon it keeps no policy and reports
// failure as a raw errno number.
//
// The kernel attaches the sender's credentials (systemd sets SO_PASSCRED on its end), which is
// how systemd checks NotifyAccess=main: the datagram must come from the daemon's own pid, so it
// is sent from this process, never from a helper.

#include <napi.h>

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <string>

namespace tunnat {

// notify(socketPath: string, message: string): number — 0 when sent, else the errno.
// socketPath is NOTIFY_SOCKET: an absolute path, or "@name" for a socket in the abstract
// namespace (the '@' becomes the leading NUL byte, as sd_notify() does).
Napi::Value Notify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsString()) {
    Napi::TypeError::New(env, "notify(socketPath: string, message: string)")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string path = info[0].As<Napi::String>().Utf8Value();
  std::string message = info[1].As<Napi::String>().Utf8Value();

  struct sockaddr_un addr;
  memset(&addr, 0, sizeof(addr));
  addr.sun_family = AF_UNIX;
  // Abstract names are not NUL-terminated: the address length says where they end. A path
  // needs room for its terminating NUL.
  bool abstract = !path.empty() && path[0] == '@';
  if (path.empty() || (path[0] != '/' && !abstract) ||
      path.size() + (abstract ? 0 : 1) > sizeof(addr.sun_path)) {
    return Napi::Number::New(env, EINVAL);
  }
  memcpy(addr.sun_path, path.data(), path.size());
  if (abstract) addr.sun_path[0] = '\0';
  socklen_t len = static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) + path.size() +
                                         (abstract ? 0 : 1));

  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Napi::Number::New(env, errno);
  int err = 0;
  ssize_t n;
  do {
    // MSG_NOSIGNAL: a vanished receiver must not raise SIGPIPE in the daemon.
    n = sendto(fd, message.data(), message.size(), MSG_NOSIGNAL,
               reinterpret_cast<struct sockaddr*>(&addr), len);
  } while (n < 0 && errno == EINTR);
  if (n < 0)
    err = errno;
  else if (static_cast<size_t>(n) != message.size())
    err = EMSGSIZE;  // a datagram is sent whole or not at all; be explicit anyway
  close(fd);
  return Napi::Number::New(env, err);
}

}  // namespace tunnat

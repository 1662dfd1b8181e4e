// tunnat packet I/O addon (docs/architecture.md §Threading and §Decisions, native-notes/README.md).
//
// Contract: this file does only what JavaScript cannot do. It opens a TUN queue
// (TUNSETIFF), sets offloads (TUNSETOFFLOAD), watches the fd with uv_poll on the
// loop of the env that loaded it, drains read() into ONE arena that JavaScript
// allocated (slots of slotSize bytes plus an Int32Array of lengths) and calls JS
// once per batch, and writes a batch back in one call. It keeps no policy: which
// errno means "retry", "device gone" or "fatal" is decided in src/io/tun.ts, so
// every error leaves here as a raw errno number (or, from the control calls, an
// Error with .code = errno name and .errno = number).
//
// Nothing on the packet path allocates: the batch callback receives two numbers,
// write() returns a number and reports details into a caller-owned Int32Array.

#include <napi.h>
#include <uv.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

// USO arrived in Linux 6.2 (commit "tun: support UDP segmentation offload");
// older userspace headers lack the names.
#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20
#endif
#ifndef TUN_F_USO6
#define TUN_F_USO6 0x40
#endif

namespace tunnat {
Napi::Value Notify(const Napi::CallbackInfo& info);  // native/notify.cc
void InitQueues(Napi::Env env, Napi::Object exports);  // native/mq.cc
}  // namespace tunnat

namespace {

// Indexes into the status Int32Array that write() fills (mirrored in src/io/tun.ts).
constexpr int kStatusWritten = 0;  // packets accepted by the kernel in this call
constexpr int kStatusDropped = 1;  // packets dropped on EAGAIN/ENOBUFS (queue full)
constexpr int kStatusErrno = 2;    // errno that stopped the call, 0 if none
constexpr int kStatusIndex = 3;    // slot index that failed with kStatusErrno
constexpr int kStatusOversize = 4; // lengths above slotSize: refused, never cut and written
constexpr size_t kStatusLen = 5;

// A full arena is drained again right after the callback, so a burst is not left
// to the next loop turn; the bound keeps timers and the control plane running
// under sustained load (uv_poll is level-triggered, so nothing is stranded).
constexpr int kMaxRoundsPerWakeup = 8;

const char* ErrnoName(int err) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
  const char* name = strerrorname_np(err);
  if (name != nullptr) return name;
#endif
  switch (err) {
    case EBADFD:
      return "EBADFD";
    default: {
      // uv_err_name() mallocs (and never frees) a string for an errno libuv does not know;
      // uv_err_name_r() writes into our buffer ("Unknown system error N").
      thread_local char buf[64];
      return uv_err_name_r(-err, buf, sizeof(buf));
    }
  }
}

// An Error with .code (errno name), .errno (number) and .syscall, like Node's own
// system errors, so callers branch on codes and never on message text.
Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall, const std::string& what) {
  std::string msg = what + ": " + ErrnoName(err) + " (" + strerror(err) + ")";
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, ErrnoName(err)));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

class Tun : public Napi::ObjectWrap<Tun> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Tun",
                       {
                           InstanceMethod<&Tun::SetOffload>("setOffload"),
                           InstanceMethod<&Tun::Start>("start"),
                           InstanceMethod<&Tun::Write>("write"),
                           InstanceMethod<&Tun::Close>("close"),
                           InstanceAccessor<&Tun::GetFd>("fd"),
                           InstanceAccessor<&Tun::GetName>("name"),
                       });
  }

  // new Tun(name: string, vnetHdr: boolean, multiQueue: boolean, fd?: number)
  // With fd (>= 0), adopt a TUN queue fd inherited from the previous daemon (a handover restart,
  // src/control/handover.ts) instead of opening one: TUNGETIFF must name the same interface with
  // the same flags. The fd is owned from here on (closed on any failure).
  explicit Tun(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Tun>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 3 || !info[0].IsString() || !info[1].IsBoolean() ||
        !info[2].IsBoolean() || (info.Length() > 3 && !info[3].IsNumber())) {
      Napi::TypeError::New(env,
                           "Tun(name: string, vnetHdr: boolean, multiQueue: boolean, fd?: number)")
          .ThrowAsJavaScriptException();
      return;
    }
    std::string name = info[0].As<Napi::String>().Utf8Value();
    if (name.size() >= IFNAMSIZ) {
      ErrnoError(env, EINVAL, "TUNSETIFF", "interface name longer than 15 bytes")
          .ThrowAsJavaScriptException();
      return;
    }
    if (info.Length() > 3) {
      Adopt(env, info[3].As<Napi::Number>().Int32Value(), name,
            info[1].As<Napi::Boolean>().Value(), info[2].As<Napi::Boolean>().Value());
      return;
    }
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
      ErrnoError(env, errno, "open", "cannot open /dev/net/tun").ThrowAsJavaScriptException();
      return;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    if (info[1].As<Napi::Boolean>().Value()) ifr.ifr_flags |= IFF_VNET_HDR;
    if (info[2].As<Napi::Boolean>().Value()) ifr.ifr_flags |= IFF_MULTI_QUEUE;
    memcpy(ifr.ifr_name, name.data(), name.size());
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
      int err = errno;
      close(fd);
      ErrnoError(env, err, "ioctl", "TUNSETIFF " + name).ThrowAsJavaScriptException();
      return;
    }
    fd_ = fd;
    ifr.ifr_name[IFNAMSIZ - 1] = '\0';
    name_ = ifr.ifr_name;
    napi_add_env_cleanup_hook(env, &Tun::EnvCleanup, this);
    cleanup_hook_ = true;
  }

  void Adopt(Napi::Env env, int fd, const std::string& name, bool vnet_hdr, bool multi_queue) {
    if (fd < 0) {
      ErrnoError(env, EBADF, "TUNGETIFF", "no fd to adopt").ThrowAsJavaScriptException();
      return;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    if (ioctl(fd, TUNGETIFF, &ifr) < 0) {
      int err = errno;
      close(fd);
      ErrnoError(env, err, "ioctl", "TUNGETIFF on the inherited fd").ThrowAsJavaScriptException();
      return;
    }
    ifr.ifr_name[IFNAMSIZ - 1] = '\0';
    short want = IFF_TUN | IFF_NO_PI | (vnet_hdr ? IFF_VNET_HDR : 0) |
                 (multi_queue ? IFF_MULTI_QUEUE : 0);
    short mask = IFF_TUN | IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE;
    if ((ifr.ifr_flags & mask) != want || name != ifr.ifr_name) {
      close(fd);
      ErrnoError(env, EINVAL, "TUNGETIFF",
                 std::string("the inherited fd is TUN ") + ifr.ifr_name +
                     " with other flags or another name than " + name)
          .ThrowAsJavaScriptException();
      return;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
      int err = errno;
      close(fd);
      ErrnoError(env, err, "fcntl", "O_NONBLOCK on the inherited fd").ThrowAsJavaScriptException();
      return;
    }
    fd_ = fd;
    name_ = ifr.ifr_name;
    napi_add_env_cleanup_hook(env, &Tun::EnvCleanup, this);
    cleanup_hook_ = true;
  }

  ~Tun() override {
    Shutdown();
    if (cleanup_hook_) napi_remove_env_cleanup_hook(Env(), &Tun::EnvCleanup, this);
  }

 private:
  Napi::Value GetFd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }
  Napi::Value GetName(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), name_);
  }

  // setOffload(flags: number): TUNSETOFFLOAD. Throws an errno Error (EINVAL when
  // the kernel does not know a flag: the caller retries with fewer).
  Napi::Value SetOffload(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (fd_ < 0) return ThrowClosed(env);
    if (info.Length() < 1 || !info[0].IsNumber()) {
      Napi::TypeError::New(env, "setOffload(flags: number)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    unsigned int flags = info[0].As<Napi::Number>().Uint32Value();
    if (ioctl(fd_, TUNSETOFFLOAD, static_cast<unsigned long>(flags)) < 0) {
      ErrnoError(env, errno, "ioctl", "TUNSETOFFLOAD").ThrowAsJavaScriptException();
    }
    return env.Undefined();
  }

  // start(arena: Uint8Array, lengths: Int32Array, slots: number, slotSize: number,
  //       status: Int32Array, onBatch: ((count: number, errno: number) => void) | null)
  // With onBatch null the arrays are only bound for write(): nothing watches the fd (a queue
  // whose reads an I/O thread does, native/mq.cc).
  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (fd_ < 0) return ThrowClosed(env);
    if (poll_ != nullptr || status_ != nullptr) {
      ErrnoError(env, EBUSY, "uv_poll_start", "already started").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (info.Length() < 6 || !info[0].IsTypedArray() || !info[1].IsTypedArray() ||
        !info[2].IsNumber() || !info[3].IsNumber() || !info[4].IsTypedArray() ||
        !(info[5].IsFunction() || info[5].IsNull())) {
      Napi::TypeError::New(env,
                           "start(arena: Uint8Array, lengths: Int32Array, slots, slotSize, "
                           "status: Int32Array, onBatch)")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    auto arena = info[0].As<Napi::TypedArray>();
    auto lengths = info[1].As<Napi::TypedArray>();
    auto status = info[4].As<Napi::TypedArray>();
    int64_t slots = info[2].As<Napi::Number>().Int64Value();
    int64_t slot_size = info[3].As<Napi::Number>().Int64Value();
    if (arena.TypedArrayType() != napi_uint8_array ||
        lengths.TypedArrayType() != napi_int32_array ||
        status.TypedArrayType() != napi_int32_array || slots < 1 || slot_size < 1 ||
        static_cast<int64_t>(arena.ElementLength()) < slots * slot_size ||
        static_cast<int64_t>(lengths.ElementLength()) < slots ||
        status.ElementLength() < kStatusLen) {
      Napi::RangeError::New(env, "arena, lengths or status too small for slots x slotSize")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    // The arena's backing store never moves (V8 ArrayBuffers are not relocated), so
    // raw pointers stay valid while the references below keep the arrays alive.
    arena_ = static_cast<uint8_t*>(arena.ArrayBuffer().Data()) + arena.ByteOffset();
    lengths_ = reinterpret_cast<int32_t*>(static_cast<uint8_t*>(lengths.ArrayBuffer().Data()) +
                                          lengths.ByteOffset());
    status_ = reinterpret_cast<int32_t*>(static_cast<uint8_t*>(status.ArrayBuffer().Data()) +
                                         status.ByteOffset());
    slots_ = static_cast<int>(slots);
    slot_size_ = static_cast<size_t>(slot_size);
    arena_ref_ = Napi::Persistent(static_cast<Napi::Object>(arena));
    lengths_ref_ = Napi::Persistent(static_cast<Napi::Object>(lengths));
    status_ref_ = Napi::Persistent(static_cast<Napi::Object>(status));
    if (info[5].IsNull()) return env.Undefined();  // bound for write() only
    callback_ = Napi::Persistent(info[5].As<Napi::Function>());
    async_context_ = new Napi::AsyncContext(env, "tunnat.tun");

    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
      ReleaseJsRefs();
      Napi::Error::New(env, "napi_get_uv_event_loop failed").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    poll_ = new uv_poll_t;
    int rc = uv_poll_init(loop, poll_, fd_);
    if (rc == 0) {
      poll_->data = this;
      rc = uv_poll_start(poll_, UV_READABLE, &Tun::OnPoll);
    }
    if (rc != 0) {
      uv_close(reinterpret_cast<uv_handle_t*>(poll_), &Tun::FreePoll);
      poll_ = nullptr;
      ReleaseJsRefs();
      ErrnoError(env, -rc, "uv_poll_start", "cannot watch " + name_).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    // While polling, the JS object must outlive any reference JS holds to it.
    Ref();
    return env.Undefined();
  }

  // write(from: number, count: number): number — write slots from..count-1 whose
  // length is > 0, each with one write(). EAGAIN/ENOBUFS drop that one packet
  // (the kernel queue is full: spinning would only stall the loop). Any other errno
  // stops the call and is reported in status[kStatusErrno]/[kStatusIndex], so the
  // caller classifies it and may resume after that slot.
  Napi::Value Write(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (status_ == nullptr) {
      Napi::Error::New(env, "write() before start()").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) {
      Napi::TypeError::New(env, "write(from: number, count: number)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    int from = info[0].As<Napi::Number>().Int32Value();
    int count = info[1].As<Napi::Number>().Int32Value();
    if (count > slots_) count = slots_;
    if (from < 0) from = 0;
    int written = 0;
    int dropped = 0;
    int oversize = 0;
    status_[kStatusErrno] = 0;
    status_[kStatusIndex] = -1;
    if (fd_ < 0) {
      status_[kStatusErrno] = EBADF;
      status_[kStatusIndex] = from;
      count = from;
    }
    for (int i = from; i < count; i++) {
      int32_t len = lengths_[i];
      if (len <= 0) continue;
      if (static_cast<size_t>(len) > slot_size_) {
        // A length the slot cannot hold is a bug above us: writing the first slotSize bytes
        // would send a packet whose headers promise more than it carries.
        oversize++;
        continue;
      }
      ssize_t n = ::write(fd_, arena_ + static_cast<size_t>(i) * slot_size_, len);
      if (n >= 0) {
        written++;
        continue;
      }
      int err = errno;
      if (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS) {
        dropped++;
        continue;
      }
      status_[kStatusErrno] = err;
      status_[kStatusIndex] = i;
      break;
    }
    status_[kStatusWritten] = written;
    status_[kStatusDropped] = dropped;
    status_[kStatusOversize] = oversize;
    return Napi::Number::New(env, written);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Shutdown();
    return info.Env().Undefined();
  }

  Napi::Value ThrowClosed(Napi::Env env) {
    ErrnoError(env, EBADF, "tun", "device is closed").ThrowAsJavaScriptException();
    return env.Undefined();
  }

  static void OnPoll(uv_poll_t* handle, int status, int events) {
    static_cast<Tun*>(handle->data)->Drain(status, events);
  }

  // Read until EAGAIN or a full arena, hand the batch to JS, repeat while the
  // arena came back full (bounded, see kMaxRoundsPerWakeup).
  void Drain(int poll_status, int /*events*/) {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    for (int round = 0; round < kMaxRoundsPerWakeup; round++) {
      int n = 0;
      int err = poll_status < 0 ? -poll_status : 0;
      while (err == 0 && n < slots_) {
        ssize_t r = ::read(fd_, arena_ + static_cast<size_t>(n) * slot_size_, slot_size_);
        if (r > 0) {
          lengths_[n++] = static_cast<int32_t>(r);
          continue;
        }
        if (r == 0) break;  // not expected from a TUN; treat as "nothing more now"
        int e = errno;
        if (e == EINTR) continue;
        if (e == EAGAIN || e == EWOULDBLOCK) break;
        err = e;
      }
      if (n == 0 && err == 0) return;
      bool full = n == slots_;
      napi_value argv[2] = {Napi::Number::New(env, n), Napi::Number::New(env, err)};
      // MakeCallback (not Call): runs process.nextTick and microtasks afterwards,
      // as for any callback that enters JS from libuv.
      napi_value result;
      napi_async_context ctx = *async_context_;
      in_callback_ = true;
      napi_status st =
          napi_make_callback(env, ctx, env.Global(), callback_.Value(), 2, argv, &result);
      in_callback_ = false;
      if (release_pending_) {
        // close() ran inside the callback: drop what it could not drop under our feet.
        release_pending_ = false;
        ReleaseJsRefs();
        Unref();
      }
      if (st == napi_pending_exception || env.IsExceptionPending()) {
        // Nobody in JS called us: hand the exception to process 'uncaughtException'.
        Napi::Error e = env.GetAndClearPendingException();
        napi_fatal_exception(env, e.Value());
        return;
      }
      // The callback may have closed the device.
      if (fd_ < 0 || poll_ == nullptr) return;
      if (!full || err != 0) return;
      poll_status = 0;
    }
  }

  void ReleaseJsRefs() {
    arena_ref_.Reset();
    lengths_ref_.Reset();
    status_ref_.Reset();
    callback_.Reset();
    delete async_context_;
    async_context_ = nullptr;
  }

  static void FreePoll(uv_handle_t* handle) { delete reinterpret_cast<uv_poll_t*>(handle); }

  // Stop the poll before closing the fd: libuv must not watch a closed descriptor.
  // Safe to call twice, from close(), the destructor and env cleanup.
  void Shutdown() {
    if (poll_ != nullptr) {
      uv_poll_stop(poll_);
      uv_close(reinterpret_cast<uv_handle_t*>(poll_), &Tun::FreePoll);
      poll_ = nullptr;
      if (in_callback_) {
        // The async context and the callback are in use by napi_make_callback right now.
        release_pending_ = true;
      } else {
        ReleaseJsRefs();
        Unref();
      }
    }
    if (fd_ >= 0) {
      close(fd_);
      fd_ = -1;
    }
  }

  static void EnvCleanup(void* arg) {
    Tun* self = static_cast<Tun*>(arg);
    self->cleanup_hook_ = false;
    // At env teardown JS references may already be gone: only release OS resources.
    if (self->poll_ != nullptr) {
      uv_poll_stop(self->poll_);
      uv_close(reinterpret_cast<uv_handle_t*>(self->poll_), &Tun::FreePoll);
      self->poll_ = nullptr;
    }
    if (self->fd_ >= 0) {
      close(self->fd_);
      self->fd_ = -1;
    }
  }

  int fd_ = -1;
  std::string name_;
  bool cleanup_hook_ = false;
  bool in_callback_ = false;
  bool release_pending_ = false;
  uv_poll_t* poll_ = nullptr;
  uint8_t* arena_ = nullptr;
  int32_t* lengths_ = nullptr;
  int32_t* status_ = nullptr;
  int slots_ = 0;
  size_t slot_size_ = 0;
  Napi::ObjectReference arena_ref_;
  Napi::ObjectReference lengths_ref_;
  Napi::ObjectReference status_ref_;
  Napi::FunctionReference callback_;
  Napi::AsyncContext* async_context_ = nullptr;
};

Napi::Value ErrnoNameJs(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), ErrnoName(info[0].As<Napi::Number>().Int32Value()));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("Tun", Tun::Define(env));
  exports.Set("errnoName", Napi::Function::New<ErrnoNameJs>(env, "errnoName"));
  exports.Set("notify", Napi::Function::New<tunnat::Notify>(env, "notify"));
  Napi::Object c = Napi::Object::New(env);
  c.Set("TUN_F_CSUM", Napi::Number::New(env, TUN_F_CSUM));
  c.Set("TUN_F_TSO4", Napi::Number::New(env, TUN_F_TSO4));
  c.Set("TUN_F_TSO6", Napi::Number::New(env, TUN_F_TSO6));
  c.Set("TUN_F_USO4", Napi::Number::New(env, TUN_F_USO4));
  c.Set("TUN_F_USO6", Napi::Number::New(env, TUN_F_USO6));
  c.Set("STATUS_WRITTEN", Napi::Number::New(env, kStatusWritten));
  c.Set("STATUS_DROPPED", Napi::Number::New(env, kStatusDropped));
  c.Set("STATUS_ERRNO", Napi::Number::New(env, kStatusErrno));
  c.Set("STATUS_INDEX", Napi::Number::New(env, kStatusIndex));
  c.Set("STATUS_OVERSIZE", Napi::Number::New(env, kStatusOversize));
  c.Set("STATUS_LEN", Napi::Number::New(env, static_cast<double>(kStatusLen)));
  exports.Set("constants", c);
  tunnat::InitQueues(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(tunnat_tun, Init)

// Multi-queue TUN I/O threads (native-notes/README.md "Multi-queue", docs/architecture.md).
//
// One native thread per TUN queue does that queue's read() and write() syscalls: with
// IFF_MULTI_QUEUE the kernel's forwarding work that runs inside those syscalls (the second
// forwarding pass, often the receiver's TCP) then spreads over every core. The packets travel
// through one ring per queue (native/ring.h) whose slots JavaScript allocated as
// SharedArrayBuffers, so the single TypeScript translator on the main thread rewrites them in
// place and nothing is copied or allocated per packet on either side.
//
// The thread: write the slots JS finished, read into the empty ones, publish, wake JS (a
// uv_async_t on the loop of the env that created us), and when there was nothing to do spin for
// up to pollUs before blocking in poll() on the TUN fd and an eventfd JS writes to ("kick"). The
// main thread spins for the same budget after each batch before returning to libuv. Policy stays
// in src/io/queues.ts: an ending thread stores its errno in the ring's exit word and wakes JS,
// which classifies it (src/io/errno.ts) and stops the device.
//
// Who writes a queue's finished slots: whoever holds the queue's write side (a try-lock; the
// `free` cursor moves only under it, so every slot is written once and a queue's packets leave in
// ring order). Normally the thread. When JS hands back slots while the thread sleeps in poll()
// and they are few and small, the main thread writes them itself instead of waking the thread
// (WriteInline): at low load that saves the thread's wakeup and its cross-CPU latency; big or
// many packets, and every packet while the thread is awake, are still written by the thread, so
// under load the kernel work inside write() stays spread over the I/O threads.
//
// Before a handover restart the old process quiesces the queues (pauseReads, the JS drain,
// awaitWritten): nobody reads any more, what was read is translated and written, and what the
// kernel queues after that is left for the successor, which reads the same queue fds.

#include <napi.h>
#include <uv.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <thread>
#include <vector>

#include "ring.h"

namespace tunnat {

namespace {

// Per-queue counters, exported by counters(out) in this order (mirrored in src/io/queues.ts).
enum Counter {
  kRead = 0,        // packets read from the queue
  kWritten,         // packets written to the queue
  kWriteDropped,    // write() refused with EAGAIN/ENOBUFS (kernel queue full)
  kWriteRejected,   // write() refused for that packet alone (EINVAL, EIO)
  kWriteOversize,   // a length above the slot size: never written
  kRingFull,        // times the ring was full, so reading stopped until JS caught up
  kWakeups,         // returns from a blocking poll()
  kSpinHits,        // rounds that found work while spinning (a wakeup saved)
  kWrittenInline,   // of kWritten: packets the main thread wrote itself (WriteInline)
  kKicks,           // eventfd wakes the main thread sent this queue's thread
  kNotifies,        // uv_async_send calls of this thread (requests to wake the main thread)
  kReadInline,      // of kRead: packets the main thread read itself (ReadInline)
  kCounterCount
};

// Values of the ring's sleeping word (native/ring.h): the thread sleeps in poll() with the TUN fd
// in its set (idle), or without it because the ring was full (only JS freeing slots helps then).
constexpr int32_t kSleepingIdle = 1;
constexpr int32_t kSleepingFull = 2;

// WriteInline's limits: the main thread writes a queue's finished slots itself only when there
// are at most this many and their lengths add up to at most this many bytes. A big packet's write
// carries a big share of kernel work (segmentation, the receiver's TCP), which belongs on the
// I/O threads; a ping, an ACK or a request is cheaper to write than to wake a thread for.
constexpr uint32_t kInlineMaxSlots = 8;
// ReadInline reads at most this many packets of one queue per look.
constexpr uint32_t kInlineMaxReads = 8;
constexpr int64_t kInlineMaxBytes = 4096;

uint64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// Raw pointer and length of a typed array, also when it views a SharedArrayBuffer
// (napi_get_arraybuffer_info refuses those; napi_get_typedarray_info does not).
bool TypedData(napi_env env, napi_value v, napi_typedarray_type want, void** data,
               size_t* length) {
  bool is = false;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return false;
  napi_typedarray_type type;
  napi_value ab;
  size_t offset;
  if (napi_get_typedarray_info(env, v, &type, length, data, &ab, &offset) != napi_ok) return false;
  return type == want && *data != nullptr;
}

struct Queue {
  int fd = -1;
  int efd = -1;
  uint8_t* arena = nullptr;
  int32_t* lengths = nullptr;
  int32_t* ctl = nullptr;
  std::atomic<uint64_t> counters[kCounterCount];
  std::atomic<bool> fault{false};
  // The write side: `free` (slots before it are written back and empty) moves only while
  // `writer` is held, by the thread or by the main thread (WriteInline). Own cache lines: the
  // thread reads `free` on every round.
  alignas(64) std::atomic<uint32_t> free{0};
  alignas(64) std::atomic<uint32_t> writer{0};
  // The read side: the ring's `fill` cursor moves only while `reader` is held, by the thread or
  // by the main thread (ReadInline).
  alignas(64) std::atomic<uint32_t> reader{0};
  // The main thread took the read side for good (pauseReads); main thread only.
  bool reader_held_by_js = false;
  std::thread thread;
  Queue() {
    for (auto& c : counters) c.store(0, std::memory_order_relaxed);
  }
  // One writer at a time per counter (the thread; the main thread for kKicks; the holder of the
  // write or read side for the write or read counters, whose lock orders them): a relaxed load +
  // store is enough.
  void Add(Counter c, uint64_t n) {
    counters[c].store(counters[c].load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  bool TryTakeWriter() {
    uint32_t none = 0;
    return writer.compare_exchange_strong(none, 1, std::memory_order_acquire,
                                          std::memory_order_relaxed);
  }
  void ReleaseWriter() { writer.store(0, std::memory_order_release); }
  bool TryTakeReader() {
    uint32_t none = 0;
    return reader.compare_exchange_strong(none, 1, std::memory_order_acquire,
                                          std::memory_order_relaxed);
  }
  void ReleaseReader() { reader.store(0, std::memory_order_release); }
};

class IoQueues : public Napi::ObjectWrap<IoQueues> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "IoQueues",
                       {
                           InstanceMethod<&IoQueues::Start>("start"),
                           InstanceMethod<&IoQueues::Kick>("kick"),
                           InstanceMethod<&IoQueues::Stop>("stop"),
                           InstanceMethod<&IoQueues::Counters>("counters"),
                           InstanceMethod<&IoQueues::InjectFault>("injectFault"),
                           InstanceMethod<&IoQueues::PauseReads>("pauseReads"),
                           InstanceMethod<&IoQueues::AwaitWritten>("awaitWritten"),
                       });
  }

  // new IoQueues(fds: number[], arenas: Uint8Array[], lengths: Int32Array[], ctl: Int32Array[],
  //              slots: number, slotSize: number, pollUs: number, onReady: () => void)
  // The typed arrays view SharedArrayBuffers; fds stay owned by the caller (src/io/tun.ts) and
  // must stay open until stop() returned.
  explicit IoQueues(const Napi::CallbackInfo& info) : Napi::ObjectWrap<IoQueues>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 8 || !info[0].IsArray() || !info[1].IsArray() || !info[2].IsArray() ||
        !info[3].IsArray() || !info[4].IsNumber() || !info[5].IsNumber() ||
        !info[6].IsNumber() || !info[7].IsFunction()) {
      Napi::TypeError::New(env,
                           "IoQueues(fds, arenas, lengths, ctl, slots, slotSize, pollUs, onReady)")
          .ThrowAsJavaScriptException();
      return;
    }
    auto fds = info[0].As<Napi::Array>();
    auto arenas = info[1].As<Napi::Array>();
    auto lens = info[2].As<Napi::Array>();
    auto ctls = info[3].As<Napi::Array>();
    int64_t slots = info[4].As<Napi::Number>().Int64Value();
    int64_t slot_size = info[5].As<Napi::Number>().Int64Value();
    double poll_us = info[6].As<Napi::Number>().DoubleValue();
    uint32_t n = fds.Length();
    if (n < 1 || n > 256 || arenas.Length() != n || lens.Length() != n || ctls.Length() != n ||
        slots < 1 || slots > (1 << 20) || slot_size < 1 || !(poll_us >= 0) ||
        poll_us > 1e6) {
      Napi::RangeError::New(env, "IoQueues: 1..256 queues, slots 1..2^20, pollUs 0..1e6")
          .ThrowAsJavaScriptException();
      return;
    }
    slots_ = static_cast<uint32_t>(slots);
    slot_size_ = static_cast<size_t>(slot_size);
    poll_ns_ = static_cast<uint64_t>(poll_us * 1000.0);
    js_budget_ = poll_ns_;
    queues_ = std::vector<Queue>(n);
    for (uint32_t i = 0; i < n; i++) {
      Queue& q = queues_[i];
      Napi::Value fd = fds.Get(i);
      void* a = nullptr;
      void* l = nullptr;
      void* c = nullptr;
      size_t alen = 0, llen = 0, clen = 0;
      if (!fd.IsNumber() || !TypedData(env, arenas.Get(i), napi_uint8_array, &a, &alen) ||
          !TypedData(env, lens.Get(i), napi_int32_array, &l, &llen) ||
          !TypedData(env, ctls.Get(i), napi_int32_array, &c, &clen) ||
          alen < static_cast<size_t>(slots) * slot_size_ || llen < slots_ ||
          clen < static_cast<size_t>(kCtlLen)) {
        Napi::RangeError::New(env, "IoQueues: a queue's fd, arena, lengths or ctl is wrong")
            .ThrowAsJavaScriptException();
        return;
      }
      q.fd = fd.As<Napi::Number>().Int32Value();
      q.arena = static_cast<uint8_t*>(a);
      q.lengths = static_cast<int32_t*>(l);
      q.ctl = static_cast<int32_t*>(c);
    }
    // Keep the shared buffers alive while the threads use them.
    Napi::Object keep = Napi::Object::New(env);
    keep.Set("arenas", arenas);
    keep.Set("lengths", lens);
    keep.Set("ctl", ctls);
    refs_ = Napi::Persistent(keep);
    callback_ = Napi::Persistent(info[7].As<Napi::Function>());
  }

  ~IoQueues() override { Join(); }

 private:
  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (started_) {
      Napi::Error::New(env, "IoQueues: already started").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
      Napi::Error::New(env, "napi_get_uv_event_loop failed").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    for (Queue& q : queues_) {
      q.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      if (q.efd < 0) {
        int err = errno;
        CloseEventFds();
        Napi::Error e = Napi::Error::New(env, "eventfd failed");
        e.Set("errno", Napi::Number::New(env, err));
        e.ThrowAsJavaScriptException();
        return env.Undefined();
      }
    }
    async_ = new uv_async_t;
    async_->data = this;
    if (uv_async_init(loop, async_, &IoQueues::OnAsync) != 0) {
      delete async_;
      async_ = nullptr;
      CloseEventFds();
      Napi::Error::New(env, "uv_async_init failed").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    async_context_ = new Napi::AsyncContext(env, "tunnat.tun.queues");
    started_ = true;
    stop_.store(false);
    for (Queue& q : queues_) {
      q.free.store(LoadAcquire(q.ctl + kCtlFill));
      q.thread = std::thread(&IoQueues::Run, this, &q);
    }
    // At env teardown (process exit without stop(), a worker's end) the threads must be joined
    // before the shared buffers they write go away.
    napi_add_env_cleanup_hook(env, &IoQueues::EnvCleanup, this);
    Ref();
    return env.Undefined();
  }

  // kick(queue): JS released slots and saw the queue's sleeping word set. Write them here if
  // WriteInline may, else wake the thread to write them.
  Napi::Value Kick(const Napi::CallbackInfo& info) {
    uint32_t i = info[0].As<Napi::Number>().Uint32Value();
    if (started_ && i < queues_.size() && !WriteInline(queues_[i])) {
      queues_[i].Add(kKicks, 1);
      Wake(queues_[i]);
    }
    return info.Env().Undefined();
  }

  // On the main thread, right after JS published `done`: write the slots [free, done) of a
  // sleeping thread's queue, or return false (the caller wakes the thread). Why no packet is
  // lost, doubled or reordered:
  // - Only the holder of the write side writes, from `free` on, in order, and moves `free`.
  // - The thread sleeps only after storing its sleeping word and then seeing `done` and `free`
  //   as it left them (seq_cst, Dekker with JS's "store done, load sleeping" and with our "store
  //   free, load sleeping" below). If it slept idle (TUN fd polled), everything up to `done` is
  //   written here before we return, so nothing waits for it; if it slept because the ring was
  //   full, it must be woken to read again, so we return false (before or after writing).
  // - A write failing with an errno that would end the thread leaves that slot unwritten and
  //   `free` before it: the woken thread retries it and ends with that errno, as it always did.
  bool WriteInline(Queue& q) {
    int32_t* ctl = q.ctl;
    if (LoadSeqCst(ctl + kCtlSleeping) != kSleepingIdle || LoadSeqCst(ctl + kCtlExit) != 0)
      return false;
    if (!q.TryTakeWriter()) return false;  // the thread is writing: it woke already
    const uint32_t done = LoadAcquire(ctl + kCtlDone);
    const uint32_t from = q.free.load(std::memory_order_acquire);
    bool ok = done - from <= kInlineMaxSlots;
    int64_t bytes = 0;
    for (uint32_t k = from; ok && k != done; k++) {
      bytes += q.lengths[k % slots_];
      ok = bytes <= kInlineMaxBytes;
    }
    int err = 0;
    if (ok) err = WriteSlots(q, done, kWrittenInline);
    q.ReleaseWriter();
    if (!ok || err != 0) return false;
    return LoadSeqCst(ctl + kCtlSleeping) != kSleepingFull;
  }

  // Write slots [free, done) of `q` and move `free` past them (the caller holds the write side).
  // Returns 0, or the errno that must end the thread; that slot stays unwritten. `also` counts
  // the written packets a second time (kWrittenInline, or kCounterCount for nothing).
  int WriteSlots(Queue& q, uint32_t done, int also) {
    uint32_t free = q.free.load(std::memory_order_relaxed);
    int fatal = 0;
    uint64_t written = 0;
    while (free != done) {
      uint32_t i = free % slots_;
      int32_t len = q.lengths[i];
      if (len > 0) {
        if (static_cast<size_t>(len) > slot_size_) {
          q.Add(kWriteOversize, 1);
        } else {
          int err = WriteOne(q.fd, q.arena + static_cast<size_t>(i) * slot_size_, len);
          if (err == 0) {
            written++;
          } else if (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS) {
            q.Add(kWriteDropped, 1);
          } else if (err == EINVAL || err == EIO) {
            q.Add(kWriteRejected, 1);
          } else {
            fatal = err;
            break;
          }
        }
      }
      free++;
    }
    if (written > 0) {
      q.Add(kWritten, written);
      if (also < kCounterCount) q.Add(static_cast<Counter>(also), written);
    }
    q.free.store(free, std::memory_order_seq_cst);
    return fatal;
  }

  // counters(out: Float64Array): queues x kCounterCount numbers, read at scrape time.
  Napi::Value Counters(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    void* d = nullptr;
    size_t len = 0;
    if (info.Length() < 1 || !TypedData(env, info[0], napi_float64_array, &d, &len) ||
        len < queues_.size() * kCounterCount) {
      Napi::RangeError::New(env, "counters(out: Float64Array of queues x COUNTERS)")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    double* out = static_cast<double*>(d);
    for (size_t i = 0; i < queues_.size(); i++)
      for (int c = 0; c < kCounterCount; c++)
        out[i * kCounterCount + c] =
            static_cast<double>(queues_[i].counters[c].load(std::memory_order_relaxed));
    return env.Undefined();
  }

  // injectFault(queue): that queue's thread ends as if a syscall had failed with ECANCELED.
  // Only for tests of what a dying I/O thread does to the daemon.
  Napi::Value InjectFault(const Napi::CallbackInfo& info) {
    uint32_t i = info[0].As<Napi::Number>().Uint32Value();
    if (i < queues_.size()) {
      queues_[i].fault.store(true);
      Wake(queues_[i]);
    }
    return info.Env().Undefined();
  }

  // The monotonic deadline of a call whose first argument is a timeout in milliseconds.
  static uint64_t DeadlineFrom(const Napi::CallbackInfo& info) {
    double ms = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue()
                                                        : 0;
    return NowNs() + static_cast<uint64_t>(ms > 0 ? ms * 1e6 : 0);
  }

  // pauseReads(timeoutMs): from now on nobody reads a queue (the threads go on writing what JS
  // hands back); returns true once every read under way has ended and been published, false if
  // one had not within timeoutMs. What arrives after stays in the kernel's TUN queue, for whoever
  // reads the queue next (a handover's successor). The main thread takes every queue's read side
  // and keeps it: a thread that saw the flag too late finds the side taken and looks again, then
  // sees the flag. The caller drains the rings (JS) and then calls awaitWritten.
  Napi::Value PauseReads(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!started_) return Napi::Boolean::New(env, false);
    reads_paused_.store(true, std::memory_order_seq_cst);
    const uint64_t deadline = DeadlineFrom(info);
    bool all = true;
    for (Queue& q : queues_) {
      if (q.reader_held_by_js) continue;
      bool got = q.TryTakeReader();
      while (!got && NowNs() < deadline) {
        sched_yield();
        got = q.TryTakeReader();
      }
      // Held now, or the deadline passed with a read still under way.
      q.reader_held_by_js = got;
      if (!got) all = false;
    }
    return Napi::Boolean::New(env, all);
  }

  // awaitWritten(timeoutMs): wait until every queue's thread wrote every slot JS handed back
  // (free has reached done), waking a thread that sleeps with slots to write. True when all are
  // written; false on the deadline or when a thread ended (its slots are not written).
  Napi::Value AwaitWritten(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!started_) return Napi::Boolean::New(env, false);
    const uint64_t deadline = DeadlineFrom(info);
    for (;;) {
      bool all = true;
      for (Queue& q : queues_) {
        if (LoadSeqCst(q.ctl + kCtlExit) != 0) return Napi::Boolean::New(env, false);
        if (q.free.load(std::memory_order_seq_cst) == LoadSeqCst(q.ctl + kCtlDone)) continue;
        all = false;
        if (LoadSeqCst(q.ctl + kCtlSleeping) != 0) Wake(q);
      }
      if (all) return Napi::Boolean::New(env, true);
      if (NowNs() >= deadline) return Napi::Boolean::New(env, false);
      sched_yield();
    }
  }

  // stop(): end and join every thread, close the async handle. Idempotent; the fds stay open.
  Napi::Value Stop(const Napi::CallbackInfo& info) {
    if (started_) napi_remove_env_cleanup_hook(info.Env(), &IoQueues::EnvCleanup, this);
    if (Join() && async_ != nullptr) {
      uv_close(reinterpret_cast<uv_handle_t*>(async_), &IoQueues::FreeAsync);
      async_ = nullptr;
      delete async_context_;
      async_context_ = nullptr;
      Unref();
    }
    return info.Env().Undefined();
  }

  static void EnvCleanup(void* arg) {
    auto* self = static_cast<IoQueues*>(arg);
    // Only OS resources: the loop and JS references are being torn down.
    self->Join();
    if (self->async_ != nullptr) {
      uv_close(reinterpret_cast<uv_handle_t*>(self->async_), &IoQueues::FreeAsync);
      self->async_ = nullptr;
    }
  }

  bool Join() {
    if (!started_) return false;
    started_ = false;
    stop_.store(true);
    for (Queue& q : queues_) Wake(q);
    for (Queue& q : queues_)
      if (q.thread.joinable()) q.thread.join();
    for (Queue& q : queues_) {
      if (q.reader_held_by_js) q.ReleaseReader();
      q.reader_held_by_js = false;
    }
    reads_paused_.store(false);
    CloseEventFds();
    return true;
  }

  void CloseEventFds() {
    for (Queue& q : queues_) {
      if (q.efd >= 0) close(q.efd);
      q.efd = -1;
    }
  }

  static void FreeAsync(uv_handle_t* h) { delete reinterpret_cast<uv_async_t*>(h); }

  static void Wake(Queue& q) {
    if (q.efd < 0) return;
    uint64_t one = 1;
    ssize_t r = write(q.efd, &one, sizeof(one));
    (void)r;  // EAGAIN: the counter is already non-zero, the thread wakes anyway
  }

  // The thread of one queue. Nothing here allocates, logs or takes a lock.
  void Run(Queue* qp) {
    Queue& q = *qp;
    // "tunnat-q<N>" in top -H, ps -L and /proc/<pid>/task/*/comm.
    char tname[16];
    snprintf(tname, sizeof(tname), "tunnat-q%u", static_cast<unsigned>(qp - queues_.data()));
    pthread_setname_np(pthread_self(), tname);
    const uint32_t n = slots_;
    int32_t* ctl = q.ctl;
    uint32_t fill = LoadAcquire(ctl + kCtlFill);
    bool full = false;
    uint64_t last_work = NowNs();
    bool spinning = false;
    // Adaptive: a spin that found nothing halves the next budget (down to 1/16 of pollUs), one
    // that found work restores it; so a queue whose traffic is sparse stops burning a core.
    uint64_t budget = poll_ns_;
    int exit_errno = 0;
    while (!stop_.load(std::memory_order_relaxed)) {
      if (q.fault.load(std::memory_order_relaxed)) {
        exit_errno = ECANCELED;
        break;
      }
      bool work = false;
      // 1. Write back what JS finished: slots [free, done), unless the main thread is writing
      //    (WriteInline); then look again in a moment.
      bool contended = false;
      uint32_t done = LoadAcquire(ctl + kCtlDone);
      if (q.free.load(std::memory_order_acquire) != done) {
        if (q.TryTakeWriter()) {
          exit_errno = WriteSlots(q, done, kCounterCount);
          q.ReleaseWriter();
          work = true;
        } else {
          contended = true;
        }
      }
      if (exit_errno != 0) break;
      const uint32_t free = q.free.load(std::memory_order_acquire);
      // 2. Read into the empty slots [fill, free + n), unless the main thread is reading
      //    (ReadInline); then look again in a moment.
      uint32_t got = 0;
      const bool paused = reads_paused_.load(std::memory_order_seq_cst);
      if (paused) {
        fill = LoadAcquire(ctl + kCtlFill);
      } else if (q.TryTakeReader()) {
        fill = LoadAcquire(ctl + kCtlFill);
        while (fill - free < n) {
          uint32_t i = fill % n;
          ssize_t r = read(q.fd, q.arena + static_cast<size_t>(i) * slot_size_, slot_size_);
          if (r > 0) {
            q.lengths[i] = static_cast<int32_t>(r);
            fill++;
            got++;
            // Hand over early in a long drain so JS works while we read on.
            if ((got & 31) == 0) Publish(q, ctl, fill);
            continue;
          }
          if (r < 0 && errno == EINTR) continue;
          if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK) exit_errno = errno;
          break;
        }
        if (got > 0) {
          Publish(q, ctl, fill);
          q.Add(kRead, got);
          work = true;
        }
        q.ReleaseReader();
      } else {
        fill = LoadAcquire(ctl + kCtlFill);
        contended = true;
      }
      if (exit_errno != 0) break;
      if (fill - free == n) {
        if (!full) q.Add(kRingFull, 1);
        full = true;
      } else {
        full = false;
      }
      if (contended && !work) {
        sched_yield();
        continue;
      }
      if (work) {
        if (spinning) {
          q.Add(kSpinHits, 1);
          budget = poll_ns_;
        }
        spinning = false;
        last_work = NowNs();
        continue;
      }
      // 3. Nothing to do: spin a little (the answer to what we just sent is often on its way),
      //    then sleep in poll() on the TUN (unless the ring is full) and the eventfd. The spin
      //    yields the core each round, so on a busy machine it does not starve whoever would
      //    produce that answer.
      if (budget > 0 && NowNs() - last_work < budget) {
        spinning = true;
        sched_yield();
        continue;
      }
      if (spinning && budget > poll_ns_ / 16) budget /= 2;
      spinning = false;
      // Sleep only if, after the sleeping word is visible, `done` and `free` are still what this
      // round saw: a new `done` means work; a new `free` (WriteInline) may mean the ring is no
      // longer full. Either way look again (WriteInline's comment has the other half).
      StoreSeqCst(ctl + kCtlSleeping, full ? kSleepingFull : kSleepingIdle);
      if (LoadSeqCst(ctl + kCtlDone) != free ||
          q.free.load(std::memory_order_seq_cst) != free || stop_.load() || q.fault.load()) {
        StoreSeqCst(ctl + kCtlSleeping, 0);
        continue;
      }
      struct pollfd pfd[2];
      pfd[0].fd = full || paused ? -1 : q.fd;  // poll ignores a negative fd
      pfd[0].events = POLLIN;
      pfd[0].revents = 0;
      pfd[1].fd = q.efd;
      pfd[1].events = POLLIN;
      pfd[1].revents = 0;
      int pr = poll(pfd, 2, -1);
      StoreSeqCst(ctl + kCtlSleeping, 0);
      q.Add(kWakeups, 1);
      if (pr < 0 && errno != EINTR) {
        exit_errno = errno;
        break;
      }
      if (pfd[1].revents & POLLIN) {
        uint64_t v;
        ssize_t r = read(q.efd, &v, sizeof(v));
        (void)r;
      }
      if (pfd[0].revents & (POLLERR | POLLHUP | POLLNVAL)) {
        // The device went away: the next read says why (EBADFD); POLLNVAL: the fd was closed.
        if (pfd[0].revents & POLLNVAL) {
          exit_errno = EBADF;
          break;
        }
        ssize_t r = read(q.fd, q.arena + static_cast<size_t>(fill % n) * slot_size_, 0);
        if (r < 0 && errno != EAGAIN && errno != EINTR) {
          exit_errno = errno;
          break;
        }
      }
      last_work = NowNs();
    }
    if (exit_errno != 0) {
      StoreSeqCst(ctl + kCtlExit, static_cast<uint32_t>(exit_errno));
      uv_async_send(async_);
    }
  }

  static int WriteOne(int fd, const uint8_t* p, int32_t len) {
    for (int tries = 0; tries < 3; tries++) {
      ssize_t w = write(fd, p, static_cast<size_t>(len));
      if (w >= 0) return 0;
      if (errno != EINTR) return errno;
    }
    return EINTR;
  }

  void Publish(Queue& q, int32_t* ctl, uint32_t fill) {
    // seq_cst, not only release: it pairs with the main thread's "js_awake_ = 0, then look at
    // every fill" so that either it sees this fill or we see it awake... or we wake it.
    StoreSeqCst(ctl + kCtlFill, fill);
    if (!js_awake_.load(std::memory_order_seq_cst)) {
      q.Add(kNotifies, 1);
      uv_async_send(async_);
    }
  }

  static void OnAsync(uv_async_t* h) { static_cast<IoQueues*>(h->data)->RunJs(); }

  // On the main thread, when a batch left no work: read a few packets from each queue whose thread
  // sleeps idle, into its ring as the thread would, and say whether any came. A packet that our
  // own writes produced at once (a ping's echo reply, an ACK: the kernel's forwarding runs inside
  // write() and often queues the answer before it returns) is then translated and written now,
  // instead of after a wake of that queue's thread and then of this one. The kernel wakes the
  // sleeping thread for the packet as well; it finds the read side taken or nothing to read.
  // Why this is safe: only the holder of the read side reads and moves `fill`, so a queue's
  // packets enter its ring in the order they left the TUN queue, and are written in ring order;
  // the thread never sleeps while it could not take the read side (it yields and looks again);
  // an errno other than EAGAIN/EINTR is left for the thread, whose own read meets it and ends it.
  bool ReadInline() {
    bool got_any = false;
    for (Queue& q : queues_) {
      int32_t* ctl = q.ctl;
      if (LoadSeqCst(ctl + kCtlSleeping) != kSleepingIdle || LoadSeqCst(ctl + kCtlExit) != 0)
        continue;
      if (!q.TryTakeReader()) continue;
      uint32_t fill = LoadAcquire(ctl + kCtlFill);
      const uint32_t free = q.free.load(std::memory_order_acquire);
      uint32_t got = 0;
      while (got < kInlineMaxReads && fill - free < slots_) {
        uint32_t i = fill % slots_;
        ssize_t r = read(q.fd, q.arena + static_cast<size_t>(i) * slot_size_, slot_size_);
        if (r > 0) {
          q.lengths[i] = static_cast<int32_t>(r);
          fill++;
          got++;
          continue;
        }
        if (r < 0 && errno == EINTR) continue;
        break;
      }
      if (got > 0) {
        StoreSeqCst(ctl + kCtlFill, fill);
        q.Add(kRead, got);
        q.Add(kReadInline, got);
        got_any = true;
      }
      q.ReleaseReader();
    }
    return got_any;
  }

  bool AnyPending() {
    for (Queue& q : queues_) {
      if (LoadSeqCst(q.ctl + kCtlFill) != LoadSeqCst(q.ctl + kCtlDone)) return true;
      if (LoadSeqCst(q.ctl + kCtlExit) != 0) return true;
    }
    return false;
  }

  // On the main thread: call JS while there is work, then spin up to pollUs for more.
  void RunJs() {
    if (!started_ || async_context_ == nullptr) return;
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    js_awake_.store(true);
    uint64_t last = NowNs();
    for (int rounds = 0; rounds < 64; rounds++) {
      napi_value result;
      napi_status st = napi_make_callback(env, *async_context_, env.Global(),
                                          callback_.Value(), 0, nullptr, &result);
      if (st == napi_pending_exception || env.IsExceptionPending()) {
        js_awake_.store(false);
        Napi::Error e = env.GetAndClearPendingException();
        napi_fatal_exception(env, e.Value());
        return;
      }
      if (!started_) break;  // JS stopped us
      bool more = AnyPending();
      if (!more) more = ReadInline();
      if (!more && js_budget_ > 0) {
        last = NowNs();
        while (!more && NowNs() - last < js_budget_) {
          sched_yield();
          more = AnyPending();
        }
        // The same adaptive budget as the I/O threads'.
        if (more)
          js_budget_ = poll_ns_;
        else if (js_budget_ > poll_ns_ / 16)
          js_budget_ /= 2;
      }
      if (!more) {
        js_awake_.store(false);
        if (!AnyPending()) return;
        js_awake_.store(true);
      }
    }
    // Bounded: let timers and the control plane run; the threads' next publish wakes us.
    js_awake_.store(false);
    if (AnyPending() && async_ != nullptr) uv_async_send(async_);
  }

  std::vector<Queue> queues_;
  uint32_t slots_ = 0;
  size_t slot_size_ = 0;
  uint64_t poll_ns_ = 0;
  uint64_t js_budget_ = 0;  // main thread only
  bool started_ = false;
  std::atomic<bool> stop_{false};
  std::atomic<bool> js_awake_{false};
  // pauseReads was called: the threads read no more (they still write).
  std::atomic<bool> reads_paused_{false};
  uv_async_t* async_ = nullptr;
  Napi::AsyncContext* async_context_ = nullptr;
  Napi::ObjectReference refs_;
  Napi::FunctionReference callback_;
};

// A test of the ring from a real second thread: ringProduce(arena, lengths, ctl, slots,
// slotSize, count) starts a thread that pushes `count` packets whose first 4 bytes and length
// encode their sequence number, as an I/O thread would (waiting while the ring is full), and
// returns at once; the JS test consumes. ringJoin() waits for it.
std::thread* producer = nullptr;

Napi::Value RingProduce(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  void* a = nullptr;
  void* l = nullptr;
  void* c = nullptr;
  size_t alen = 0, llen = 0, clen = 0;
  if (producer != nullptr || info.Length() < 6 ||
      !TypedData(env, info[0], napi_uint8_array, &a, &alen) ||
      !TypedData(env, info[1], napi_int32_array, &l, &llen) ||
      !TypedData(env, info[2], napi_int32_array, &c, &clen)) {
    Napi::TypeError::New(env, "ringProduce(arena, lengths, ctl, slots, slotSize, count)")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  uint32_t n = info[3].As<Napi::Number>().Uint32Value();
  size_t slot = info[4].As<Napi::Number>().Uint32Value();
  uint32_t count = info[5].As<Napi::Number>().Uint32Value();
  if (n == 0 || slot < 4 || alen < n * slot || llen < n || clen < static_cast<size_t>(kCtlLen)) {
    Napi::RangeError::New(env, "ringProduce: sizes").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto* arena = static_cast<uint8_t*>(a);
  auto* lengths = static_cast<int32_t*>(l);
  auto* ctl = static_cast<int32_t*>(c);
  producer = new std::thread([=]() {
    uint32_t fill = LoadAcquire(ctl + kCtlFill);
    for (uint32_t k = 0; k < count; k++) {
      // Wait for room: the consumer's done cursor frees slots.
      while (fill - LoadAcquire(ctl + kCtlDone) >= n) CpuRelax();
      uint32_t i = fill % n;
      uint8_t* p = arena + static_cast<size_t>(i) * slot;
      __builtin_memcpy(p, &k, 4);
      lengths[i] = static_cast<int32_t>(4 + k % (slot - 3));
      fill++;
      StoreRelease(ctl + kCtlFill, fill);
    }
  });
  return env.Undefined();
}

Napi::Value RingJoin(const Napi::CallbackInfo& info) {
  if (producer != nullptr) {
    producer->join();
    delete producer;
    producer = nullptr;
  }
  return info.Env().Undefined();
}

// socketPair(): [a, b], a connected AF_UNIX stream socket pair (non-blocking, close-on-exec), so
// a test can run IoQueues on a real fd without a TUN (test/unit/io/queue-writer.test.ts).
Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) {
    Napi::Error e = Napi::Error::New(env, "socketpair failed");
    e.Set("errno", Napi::Number::New(env, errno));
    e.ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(0u, Napi::Number::New(env, sv[0]));
  out.Set(1u, Napi::Number::New(env, sv[1]));
  return out;
}

}  // namespace

void InitQueues(Napi::Env env, Napi::Object exports) {
  exports.Set("IoQueues", IoQueues::Define(env));
  exports.Set("ringProduce", Napi::Function::New<RingProduce>(env, "ringProduce"));
  exports.Set("ringJoin", Napi::Function::New<RingJoin>(env, "ringJoin"));
  exports.Set("socketPair", Napi::Function::New<SocketPair>(env, "socketPair"));
  Napi::Object c = Napi::Object::New(env);
  c.Set("CTL_FILL", Napi::Number::New(env, kCtlFill));
  c.Set("CTL_DONE", Napi::Number::New(env, kCtlDone));
  c.Set("CTL_SLEEPING", Napi::Number::New(env, kCtlSleeping));
  c.Set("CTL_EXIT", Napi::Number::New(env, kCtlExit));
  c.Set("CTL_LEN", Napi::Number::New(env, kCtlLen));
  c.Set("COUNTERS", Napi::Number::New(env, kCounterCount));
  exports.Set("queueConstants", c);
}

}  // namespace tunnat

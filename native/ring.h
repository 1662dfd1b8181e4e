// A single-producer single-consumer ring of fixed-size packet slots shared between one native
// I/O thread and the JavaScript thread (native-notes/README.md "Multi-queue").
//
// The slots live in memory JavaScript allocated (SharedArrayBuffers); this header only defines
// where the cursors are and how they are read and written. Three free-running uint32 cursors
// (they wrap at 2^32; only differences are used, and a ring never holds 2^31 slots):
//
//   fill  written by the I/O thread: slots [done, fill) hold packets read from the TUN
//   done  written by JS:            slots [free, done) are translated and may be written back
//   free  private to the I/O thread: slots [fill, free + size) are empty
//
// so a slot travels I/O thread -> JS -> I/O thread and is never copied. Each cursor is on its
// own 64-byte line. The producer of a cursor publishes it with a release store after writing the
// slot bytes and lengths; the other side loads it with acquire before touching the slots.
// JavaScript's Atomics.store/Atomics.load are sequentially consistent, which is at least that.
//
// `sleeping` is the I/O thread's "about to block in poll()" flag: it stores 1 (seq_cst) and then
// loads `done` (seq_cst); JS stores `done` (seq_cst) and then loads `sleeping`. One of the two
// sees the other's store (Dekker), so either the thread sees the new work or JS kicks its eventfd.

#ifndef TUNNAT_NATIVE_RING_H_
#define TUNNAT_NATIVE_RING_H_

#include <cstdint>

namespace tunnat {

// Indexes (in int32 units) of the control words; mirrored in src/io/ring.ts.
constexpr int kCtlFill = 0;
constexpr int kCtlDone = 16;
constexpr int kCtlSleeping = 32;
// Set by the I/O thread when it ends: 0 while running, else the errno that ended it.
constexpr int kCtlExit = 48;
constexpr int kCtlLen = 64;

inline uint32_t LoadAcquire(const int32_t* p) {
  return static_cast<uint32_t>(__atomic_load_n(p, __ATOMIC_ACQUIRE));
}
inline void StoreRelease(int32_t* p, uint32_t v) {
  __atomic_store_n(p, static_cast<int32_t>(v), __ATOMIC_RELEASE);
}
inline uint32_t LoadSeqCst(const int32_t* p) {
  return static_cast<uint32_t>(__atomic_load_n(p, __ATOMIC_SEQ_CST));
}
inline void StoreSeqCst(int32_t* p, uint32_t v) {
  __atomic_store_n(p, static_cast<int32_t>(v), __ATOMIC_SEQ_CST);
}

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

}  // namespace tunnat

#endif  // TUNNAT_NATIVE_RING_H_

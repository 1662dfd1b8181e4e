/*
 * natload: the load generators and servers of `npm run bench` (test/bench/bench.sh), in C so
 * that the senders, not the NAT under test, are never the slow part. Every mode is bounded in
 * time (and the senders in count); each prints one JSON object on stdout when it ends.
 *
 *   natload rr-server PORT SECONDS WORKERS
 *       TCP server: echoes every byte it reads (1-byte request/response and the connection
 *       test); WORKERS processes share the port with SO_REUSEPORT. Exits after SECONDS.
 *   natload rr-client ADDR PORT SECONDS
 *       One TCP connection (TCP_NODELAY): send 1 byte, wait for 1 byte, repeat. Prints the
 *       transaction count, rate and the latency percentiles of every transaction.
 *   natload crr-client ADDR PORT SECONDS INFLIGHT
 *       New TCP connections: INFLIGHT at a time, each connect, 1 byte each way, close.
 *   natload udp-send ADDR PORT SIZE SECONDS MAXPACKETS
 *       UDP datagrams of SIZE payload bytes as fast as the socket takes them (sendmmsg), from
 *       one socket (one flow), until SECONDS or MAXPACKETS.
 *   natload udp-sink ADDR PORT SECONDS WORKERS
 *       Reads UDP datagrams on PORT (SO_REUSEPORT, WORKERS processes); prints what was read.
 *   natload flow-fill SRC DST SPORT0 NSPORTS DPORT0 NDPORTS PPS SECONDS
 *       One 1-byte UDP datagram for each of NSPORTS x NDPORTS source/destination port pairs
 *       (raw socket, IP_HDRINCL, needs root), paced at PPS: that many distinct flows.
 *   natload wake COUNT IDLE_MS
 *       What waking an idle CPU costs on this machine: two processes pinned to two different
 *       CPUs pass one byte there and back over pipes, COUNT times, each time after both slept
 *       IDLE_MS; prints the round trip's percentiles (two wake-ups of an idle CPU, the number a
 *       userspace NAT adds to an idle ping at least: the daemon is woken for the request and the
 *       pinger for the reply, where the kernel's NAT forwards both in the sender's own context).
 *       Sends nothing on any network.
 *   natload ct-flush
 *       Empties the kernel's IPv4 connection tracking table of the current network namespace
 *       (ctnetlink IPCTNL_MSG_CT_DELETE without a tuple, as `conntrack -F` does), so entries of
 *       one kernel block do not linger into the next.
 *
 * Addresses come from the caller (the lab's addresses live in lab/lab.json); this program
 * sends only to the ADDR/DST it is given.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <linux/netlink.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
  fprintf(stderr, "natload: %s: %s\n", what, strerror(errno));
  exit(1);
}

static long num(const char *s, long lo, long hi, const char *name) {
  char *end = NULL;
  long v = strtol(s, &end, 10);
  if (end == s || *end != '\0' || v < lo || v > hi) {
    fprintf(stderr, "natload: %s must be an integer %ld..%ld, not %s\n", name, lo, hi, s);
    exit(2);
  }
  return v;
}

static struct sockaddr_in addr_of(const char *ip, long port) {
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
    fprintf(stderr, "natload: not an IPv4 address: %s\n", ip);
    exit(2);
  }
  return a;
}

/* CPU seconds this process (and its waited-for children) used, for the "sender CPU" figures. */
static double cpu_self(void) {
  struct rusage a, b;
  getrusage(RUSAGE_SELF, &a);
  getrusage(RUSAGE_CHILDREN, &b);
  return (double)(a.ru_utime.tv_sec + a.ru_stime.tv_sec + b.ru_utime.tv_sec + b.ru_stime.tv_sec) +
         (double)(a.ru_utime.tv_usec + a.ru_stime.tv_usec + b.ru_utime.tv_usec +
                  b.ru_stime.tv_usec) /
             1e6;
}

static int cmp_u32(const void *x, const void *y) {
  uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
  return a < b ? -1 : a > b;
}

/* Run `fn` in `workers` forked processes and wait for all (bounded: each ends by its deadline). */
static void fork_workers(long workers, void (*fn)(void *), void *arg) {
  for (long i = 0; i < workers; i++) {
    pid_t p = fork();
    if (p < 0) die("fork");
    if (p == 0) {
      fn(arg);
      _exit(0);
    }
  }
  while (wait(NULL) > 0) {
  }
}

/* ---- rr-server --------------------------------------------------------------------------- */
struct server_arg {
  long port;
  double deadline;
};

static void rr_server_worker(void *p) {
  struct server_arg *a = p;
  int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  int one = 1;
  if (l < 0) die("socket");
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  setsockopt(l, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)a->port);
  if (bind(l, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
  if (listen(l, 4096) < 0) die("listen");
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = l};
  epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
  struct epoll_event evs[256];
  char buf[4096];
  while (now() < a->deadline) {
    int n = epoll_wait(ep, evs, 256, 200);
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd == l) {
        for (int k = 0; k < 256; k++) {
          int c = accept4(l, NULL, NULL, SOCK_NONBLOCK);
          if (c < 0) break;
          setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
        }
        continue;
      }
      ssize_t r = read(fd, buf, sizeof buf);
      if (r > 0) {
        if (write(fd, buf, (size_t)r) < 0) close(fd);
      } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
        close(fd); /* closing removes it from the epoll set */
      }
    }
  }
}

static int rr_server(char **v) {
  struct server_arg a = {num(v[0], 1, 65535, "PORT"), now() + (double)num(v[1], 1, 86400, "SECONDS")};
  fork_workers(num(v[2], 1, 64, "WORKERS"), rr_server_worker, &a);
  printf("{\"mode\":\"rr-server\"}\n");
  return 0;
}

/* ---- rr-client --------------------------------------------------------------------------- */
#define MAX_SAMPLES (4u << 20) /* 16 MB of latencies: ~4 M transactions, far above any rate here */

static int rr_client(char **v) {
  struct sockaddr_in a = addr_of(v[0], num(v[1], 1, 65535, "PORT"));
  double secs = (double)num(v[2], 1, 3600, "SECONDS");
  uint32_t *lat = malloc(MAX_SAMPLES * sizeof *lat);
  if (!lat) die("malloc");
  int s = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  if (s < 0) die("socket");
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct timeval tv = {2, 0}; /* a lost reply ends the run instead of hanging it */
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
  double c0 = cpu_self(), t0 = now(), end = t0 + secs;
  uint32_t n = 0, errors = 0;
  char b = 'x';
  while (n < MAX_SAMPLES) {
    uint64_t s0 = now_ns();
    if (write(s, &b, 1) != 1 || read(s, &b, 1) != 1) {
      errors++;
      break;
    }
    uint64_t d = now_ns() - s0;
    lat[n++] = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
    if ((n & 63) == 0 && now() >= end) break;
  }
  double el = now() - t0;
  qsort(lat, n, sizeof *lat, cmp_u32);
  double p50 = n ? lat[(size_t)(n * 0.50)] / 1e3 : 0, p99 = n ? lat[(size_t)(n * 0.99)] / 1e3 : 0;
  printf("{\"mode\":\"rr-client\",\"transactions\":%u,\"seconds\":%.3f,\"rate\":%.1f,"
         "\"p50Us\":%.1f,\"p99Us\":%.1f,\"maxUs\":%.1f,\"errors\":%u,\"cpuSeconds\":%.3f}\n",
         n, el, n / el, p50, p99, n ? lat[n - 1] / 1e3 : 0, errors, cpu_self() - c0);
  return 0;
}

/* ---- crr-client -------------------------------------------------------------------------- */
enum { C_CONNECTING, C_WAITING };

static int crr_open(int ep, const struct sockaddr_in *a, int *state, unsigned long *errors) {
  for (int tries = 0; tries < 4; tries++) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (s < 0) die("socket");
    int one = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(s, (const struct sockaddr *)a, sizeof *a) < 0 && errno != EINPROGRESS) {
      (*errors)++;
      close(s);
      continue;
    }
    state[s] = C_CONNECTING;
    struct epoll_event ev = {.events = EPOLLOUT, .data.fd = s};
    epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
    return 1;
  }
  return 0;
}

static int crr_client(char **v) {
  struct sockaddr_in a = addr_of(v[0], num(v[1], 1, 65535, "PORT"));
  double secs = (double)num(v[2], 1, 3600, "SECONDS");
  long inflight = num(v[3], 1, 512, "INFLIGHT");
  static int state[65536];
  int ep = epoll_create1(0);
  unsigned long done = 0, errors = 0;
  long open = 0;
  double c0 = cpu_self(), t0 = now(), end = t0 + secs;
  for (long i = 0; i < inflight; i++) open += crr_open(ep, &a, state, &errors);
  struct epoll_event evs[512];
  char b = 'x';
  while (open > 0 && now() < end) {
    int n = epoll_wait(ep, evs, 512, 100);
    for (int i = 0; i < n; i++) {
      int s = evs[i].data.fd;
      int fail = (evs[i].events & (EPOLLERR | EPOLLHUP)) != 0;
      if (!fail && state[s] == C_CONNECTING) {
        if (write(s, &b, 1) == 1) {
          state[s] = C_WAITING;
          struct epoll_event ev = {.events = EPOLLIN, .data.fd = s};
          epoll_ctl(ep, EPOLL_CTL_MOD, s, &ev);
          continue;
        }
        fail = 1;
      } else if (!fail) {
        if (read(s, &b, 1) == 1) done++;
        else fail = 1;
      }
      if (fail) errors++;
      close(s);
      open--;
      open += crr_open(ep, &a, state, &errors);
    }
  }
  double el = now() - t0;
  printf("{\"mode\":\"crr-client\",\"connections\":%lu,\"seconds\":%.3f,\"rate\":%.1f,"
         "\"errors\":%lu,\"inflight\":%ld,\"cpuSeconds\":%.3f}\n",
         done, el, done / el, errors, inflight, cpu_self() - c0);
  return 0;
}

/* ---- udp-send ---------------------------------------------------------------------------- */
#define BATCH 64

static int udp_send(char **v) {
  struct sockaddr_in a = addr_of(v[0], num(v[1], 1, 65535, "PORT"));
  long size = num(v[2], 1, 1472, "SIZE");
  double secs = (double)num(v[3], 1, 3600, "SECONDS");
  unsigned long max = (unsigned long)num(v[4], 1, 1000000000L, "MAXPACKETS");
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  if (s < 0) die("socket");
  if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
  static char payload[1472];
  memset(payload, 'u', sizeof payload);
  struct iovec iov[BATCH];
  struct mmsghdr m[BATCH];
  memset(m, 0, sizeof m);
  for (int i = 0; i < BATCH; i++) {
    iov[i].iov_base = payload;
    iov[i].iov_len = (size_t)size;
    m[i].msg_hdr.msg_iov = &iov[i];
    m[i].msg_hdr.msg_iovlen = 1;
  }
  unsigned long sent = 0, refused = 0;
  double c0 = cpu_self(), t0 = now(), end = t0 + secs;
  while (sent < max) {
    unsigned int want = max - sent < BATCH ? (unsigned int)(max - sent) : BATCH;
    int r = sendmmsg(s, m, want, 0);
    if (r > 0) sent += (unsigned long)r;
    else refused++; /* ENOBUFS and the like: the local queue was full; counted, not retried */
    if ((sent & 1023) < BATCH && now() >= end) break;
  }
  double el = now() - t0;
  printf("{\"mode\":\"udp-send\",\"packets\":%lu,\"seconds\":%.3f,\"rate\":%.1f,"
         "\"refused\":%lu,\"cpuSeconds\":%.3f}\n",
         sent, el, sent / el, refused, cpu_self() - c0);
  return 0;
}

/* ---- udp-sink ---------------------------------------------------------------------------- */
struct sink_arg {
  struct sockaddr_in a;
  double deadline;
  int out; /* pipe for the per-worker counts */
};

static void udp_sink_worker(void *p) {
  struct sink_arg *a = p;
  int s = socket(AF_INET, SOCK_DGRAM, 0), one = 1, rcv = 8 << 20;
  if (s < 0) die("socket");
  setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  if (setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &rcv, sizeof rcv) < 0)
    setsockopt(s, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
  if (bind(s, (struct sockaddr *)&a->a, sizeof a->a) < 0) die("bind");
  static char bufs[BATCH][2048];
  struct iovec iov[BATCH];
  struct mmsghdr m[BATCH];
  memset(m, 0, sizeof m);
  for (int i = 0; i < BATCH; i++) {
    iov[i].iov_base = bufs[i];
    iov[i].iov_len = sizeof bufs[i];
    m[i].msg_hdr.msg_iov = &iov[i];
    m[i].msg_hdr.msg_iovlen = 1;
  }
  unsigned long got = 0, bytes = 0;
  struct pollfd pf = {.fd = s, .events = POLLIN};
  while (now() < a->deadline) {
    if (poll(&pf, 1, 100) <= 0) continue;
    int r = recvmmsg(s, m, BATCH, MSG_DONTWAIT, NULL);
    for (int i = 0; i < r; i++) bytes += m[i].msg_len;
    if (r > 0) got += (unsigned long)r;
  }
  unsigned long rec[2] = {got, bytes};
  if (write(a->out, rec, sizeof rec) != sizeof rec) die("write");
}

static int udp_sink(char **v) {
  struct sink_arg a;
  a.a = addr_of(v[0], num(v[1], 1, 65535, "PORT"));
  a.deadline = now() + (double)num(v[2], 1, 3600, "SECONDS");
  long workers = num(v[3], 1, 64, "WORKERS");
  int fds[2];
  if (pipe(fds) < 0) die("pipe");
  a.out = fds[1];
  fork_workers(workers, udp_sink_worker, &a);
  close(fds[1]);
  unsigned long got = 0, bytes = 0, rec[2];
  while (read(fds[0], rec, sizeof rec) == sizeof rec) {
    got += rec[0];
    bytes += rec[1];
  }
  printf("{\"mode\":\"udp-sink\",\"packets\":%lu,\"bytes\":%lu,\"workers\":%ld,"
         "\"cpuSeconds\":%.3f}\n",
         got, bytes, workers, cpu_self());
  return 0;
}

/* ---- flow-fill --------------------------------------------------------------------------- */
static uint16_t csum(const void *p, size_t n, uint32_t sum) {
  const uint8_t *b = p;
  for (size_t i = 0; i + 1 < n; i += 2) sum += (uint32_t)(b[i] << 8 | b[i + 1]);
  if (n & 1) sum += (uint32_t)(b[n - 1] << 8);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return (uint16_t)~sum;
}

static int flow_fill(char **v) {
  struct sockaddr_in src = addr_of(v[0], 1), dst = addr_of(v[1], 1);
  long sp0 = num(v[2], 1, 65535, "SPORT0"), nsp = num(v[3], 1, 65535, "NSPORTS");
  long dp0 = num(v[4], 1, 65535, "DPORT0"), ndp = num(v[5], 1, 65535, "NDPORTS");
  long pps = num(v[6], 1000, 10000000, "PPS");
  double secs = (double)num(v[7], 1, 3600, "SECONDS");
  if (sp0 + nsp - 1 > 65535 || dp0 + ndp - 1 > 65535) {
    fprintf(stderr, "natload: port range beyond 65535\n");
    return 2;
  }
  int s = socket(AF_INET, SOCK_RAW, IPPROTO_RAW); /* IPPROTO_RAW implies IP_HDRINCL */
  if (s < 0) die("raw socket (needs root)");
  int sndbuf = 8 << 20;
  setsockopt(s, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf);
  static uint8_t pkts[BATCH][29];
  struct iovec iov[BATCH];
  struct mmsghdr m[BATCH];
  memset(m, 0, sizeof m);
  for (int i = 0; i < BATCH; i++) {
    iov[i].iov_base = pkts[i];
    iov[i].iov_len = sizeof pkts[i];
    m[i].msg_hdr.msg_iov = &iov[i];
    m[i].msg_hdr.msg_iovlen = 1;
    m[i].msg_hdr.msg_name = &dst;
    m[i].msg_hdr.msg_namelen = sizeof dst;
  }
  unsigned long total = (unsigned long)nsp * (unsigned long)ndp, sent = 0, refused = 0;
  double t0 = now(), end = t0 + secs;
  while (sent < total && now() < end) {
    int k = 0;
    for (; k < BATCH && sent + (unsigned long)k < total; k++) {
      unsigned long idx = sent + (unsigned long)k;
      uint16_t sport = (uint16_t)(sp0 + (long)(idx % (unsigned long)nsp));
      uint16_t dport = (uint16_t)(dp0 + (long)(idx / (unsigned long)nsp));
      uint8_t *p = pkts[k];
      struct iphdr *ip = (struct iphdr *)p;
      struct udphdr *u = (struct udphdr *)(p + 20);
      memset(p, 0, 28);
      ip->version = 4;
      ip->ihl = 5;
      ip->tot_len = htons(29);
      ip->ttl = 64;
      ip->protocol = IPPROTO_UDP;
      ip->saddr = src.sin_addr.s_addr;
      ip->daddr = dst.sin_addr.s_addr;
      ip->check = htons(csum(p, 20, 0));
      u->source = htons(sport);
      u->dest = htons(dport);
      u->len = htons(9);
      p[28] = 'f';
      /* UDP checksum over the pseudo-header, header and payload */
      uint32_t ph = 0;
      const uint8_t *sa = (const uint8_t *)&ip->saddr, *da = (const uint8_t *)&ip->daddr;
      ph += (uint32_t)(sa[0] << 8 | sa[1]) + (uint32_t)(sa[2] << 8 | sa[3]);
      ph += (uint32_t)(da[0] << 8 | da[1]) + (uint32_t)(da[2] << 8 | da[3]);
      ph += IPPROTO_UDP + 9;
      uint16_t c = csum(p + 20, 9, ph);
      u->check = htons(c == 0 ? 0xffff : c);
    }
    int r = sendmmsg(s, m, (unsigned int)k, 0);
    if (r > 0) sent += (unsigned long)r;
    else refused++;
    /* pacing: sleep until this many packets are due */
    double due = t0 + (double)sent / (double)pps, t = now();
    if (due > t) {
      struct timespec ts = {(time_t)(due - t), (long)((due - t - (double)(time_t)(due - t)) * 1e9)};
      nanosleep(&ts, NULL);
    }
  }
  double el = now() - t0;
  printf("{\"mode\":\"flow-fill\",\"packets\":%lu,\"seconds\":%.3f,\"rate\":%.1f,\"refused\":%lu}\n",
         sent, el, sent / el, refused);
  return 0;
}

/* ---- ct-flush ---------------------------------------------------------------------------- */
static int ct_flush(char **v) {
  (void)v;
  int s = socket(AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER);
  if (s < 0) die("netlink socket");
  struct {
    struct nlmsghdr nh;
    struct nfgenmsg nf;
  } req;
  memset(&req, 0, sizeof req);
  req.nh.nlmsg_len = sizeof req;
  req.nh.nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE;
  req.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
  req.nh.nlmsg_seq = 1;
  req.nf.nfgen_family = AF_INET;
  req.nf.version = NFNETLINK_V0;
  struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
  if (sendto(s, &req, sizeof req, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0)
    die("netlink send");
  struct timeval tv = {10, 0};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[4096];
  ssize_t n = recv(s, buf, sizeof buf, 0);
  if (n < (ssize_t)sizeof(struct nlmsghdr)) die("netlink ack");
  struct nlmsghdr *h = (struct nlmsghdr *)buf;
  int err = 0;
  if (h->nlmsg_type == NLMSG_ERROR) err = ((struct nlmsgerr *)NLMSG_DATA(h))->error;
  if (err != 0 && err != -ENOENT) {
    errno = -err;
    die("conntrack flush");
  }
  printf("{\"mode\":\"ct-flush\"}\n");
  return 0;
}

static void pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  sched_setaffinity(0, sizeof set, &set); /* best effort: a one-CPU machine shares the CPU */
}

static int wake(char **v) {
  long count = num(v[0], 1, 100000, "COUNT"), idle_ms = num(v[1], 0, 1000, "IDLE_MS");
  int there[2], back[2];
  if (pipe(there) < 0 || pipe(back) < 0) die("pipe");
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    pin(ncpu > 1 ? 1 : 0);
    char b;
    while (read(there[0], &b, 1) == 1 && b != 'q')
      if (write(back[1], &b, 1) != 1) _exit(1);
    _exit(0);
  }
  pin(0);
  uint32_t *us = calloc((size_t)count, sizeof *us);
  if (!us) die("calloc");
  struct timespec idle = {idle_ms / 1000, (idle_ms % 1000) * 1000000L};
  char b = 'x';
  for (long i = 0; i < count; i++) {
    nanosleep(&idle, NULL);
    uint64_t t0 = now_ns();
    if (write(there[1], &b, 1) != 1 || read(back[0], &b, 1) != 1) die("pipe round trip");
    us[i] = (uint32_t)((now_ns() - t0) / 1000);
  }
  b = 'q';
  if (write(there[1], &b, 1) != 1) die("write");
  waitpid(child, NULL, 0);
  qsort(us, (size_t)count, sizeof *us, cmp_u32);
  printf("{\"mode\":\"wake\",\"count\":%ld,\"idleMs\":%ld,\"cpus\":%ld,\"p50Us\":%u,\"p90Us\":%u,"
         "\"p99Us\":%u}\n",
         count, idle_ms, ncpu, us[count / 2], us[count * 9 / 10], us[count * 99 / 100]);
  free(us);
  return 0;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, NULL, _IOLBF, 0);
  struct rlimit rl = {65536, 65536};
  setrlimit(RLIMIT_NOFILE, &rl);
  struct {
    const char *name;
    int args;
    int (*fn)(char **);
  } modes[] = {
      {"rr-server", 3, rr_server}, {"rr-client", 3, rr_client}, {"crr-client", 4, crr_client},
      {"udp-send", 5, udp_send},   {"udp-sink", 4, udp_sink},   {"flow-fill", 8, flow_fill},
      {"ct-flush", 0, ct_flush},   {"wake", 2, wake},
  };
  for (size_t i = 0; argc >= 2 && i < sizeof modes / sizeof modes[0]; i++)
    if (strcmp(argv[1], modes[i].name) == 0) {
      if (argc - 2 != modes[i].args) break;
      return modes[i].fn(argv + 2);
    }
  fprintf(stderr, "usage: see the comment at the top of natload.c\n");
  return 2;
}

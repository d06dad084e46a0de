/* probe: the measurements `gureum compare` makes inside a VM and inside a container, with the
 * same code in both (no libc: one static binary, whatever the guest's userland; x86-64 Linux).
 *
 *   probe cpu N                  N rounds of a fixed integer job: prints "ns T"
 *   probe syscall N              N getppid() calls: prints "ns T"
 *   probe disk FILE MIB          on FILE's filesystem: "write_ns", "read_ns" (MIB MiB in 1 MiB
 *                                blocks, written then fsync'd, read back), "randwrite_ns" and
 *                                "randread_ns" (RANDOM_OPS 4 KiB blocks at random offsets, each
 *                                write followed by fdatasync), "direct 1|0" (reads bypassed the
 *                                page cache with O_DIRECT, or could not)
 *   probe serve PORT             accepts one connection: echoes single bytes, then takes a
 *                                stream to its end and answers one byte
 *   probe client IP PORT N MIB   N one-byte round trips ("rtt_ns" in all), then MIB MiB sent
 *                                until the server's answer ("send_ns")
 *
 * Every figure is printed as "name integer" lines; the caller computes rates. Exits 0, or with
 * the failed call's errno.
 */

#define SYS_READ 0
#define SYS_WRITE 1
#define SYS_OPEN 2
#define SYS_CLOSE 3
#define SYS_PREAD 17
#define SYS_PWRITE 18
#define SYS_SOCKET 41
#define SYS_CONNECT 42
#define SYS_ACCEPT 43
#define SYS_BIND 49
#define SYS_LISTEN 50
#define SYS_SETSOCKOPT 54
#define SYS_EXIT 60
#define SYS_FSYNC 74
#define SYS_FDATASYNC 75
#define SYS_FTRUNCATE 77
#define SYS_UNLINK 87
#define SYS_GETPPID 110
#define SYS_CLOCK_GETTIME 228

#define O_RDWR 02
#define O_CREAT 0100
#define O_TRUNC 01000
#define O_DIRECT 040000
#define EINVAL 22
#define RANDOM_OPS 500
#define BLOCK (1 << 20)

static char buf[BLOCK] __attribute__((aligned(4096)));

static long sys6(long n, long a, long b, long c, long d, long e)
{
	long ret;
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
			 : "rcx", "r11", "memory");
	return ret;
}

#define sys(n, a, b, c) sys6(n, (long)(a), (long)(b), (long)(c), 0, 0)

/* gcc may emit calls to these even without a libc. */
void *memset(void *dst, int c, unsigned long n)
{
	char *d = dst;
	while (n--)
		*d++ = (char)c;
	return dst;
}

void *memcpy(void *dst, const void *src, unsigned long n)
{
	char *d = dst;
	const char *s = src;
	while (n--)
		*d++ = *s++;
	return dst;
}

static void quit(long code)
{
	sys(SYS_EXIT, code, 0, 0);
	for (;;) {
	}
}

static long check(long ret)
{
	if (ret < 0)
		quit(-ret);
	return ret;
}

static long now_ns(void)
{
	long ts[2];
	sys(SYS_CLOCK_GETTIME, 1 /* CLOCK_MONOTONIC */, ts, 0);
	return ts[0] * 1000000000L + ts[1];
}

static long number(const char *s)
{
	long n = 0;
	while (*s >= '0' && *s <= '9')
		n = n * 10 + (*s++ - '0');
	return n;
}

static int same(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return *a == *b;
}

static void say(const char *name, long value)
{
	char line[64];
	int n = 0;
	char digits[24];
	int d = 0;
	while (*name && n < 40)
		line[n++] = *name++;
	line[n++] = ' ';
	if (value < 0) {
		line[n++] = '-';
		value = -value;
	}
	do {
		digits[d++] = (char)('0' + value % 10);
		value /= 10;
	} while (value);
	while (d)
		line[n++] = digits[--d];
	line[n++] = '\n';
	sys(SYS_WRITE, 1, line, n);
}

static unsigned long rng = 88172645463325252UL;

static unsigned long next_random(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static void cpu(long rounds)
{
	long start = now_ns();
	unsigned long acc = 1;
	for (long i = 0; i < rounds; i++) {
		for (int j = 0; j < 1000; j++)
			acc = acc * 6364136223846793005UL + (acc >> 17) + (unsigned long)j;
	}
	say("ns", now_ns() - start);
	say("check", (long)(acc & 0xffff)); /* the loop's result is used: it is not optimised away */
}

static void syscalls(long n)
{
	long start = now_ns();
	for (long i = 0; i < n; i++)
		sys(SYS_GETPPID, 0, 0, 0);
	say("ns", now_ns() - start);
}

static void disk(const char *path, long mib)
{
	long fd = check(sys(SYS_OPEN, path, O_RDWR | O_CREAT | O_TRUNC, 0600));
	for (long i = 0; i < BLOCK; i++)
		buf[i] = (char)next_random();
	long start = now_ns();
	for (long i = 0; i < mib; i++)
		check(sys(SYS_WRITE, fd, buf, BLOCK));
	check(sys(SYS_FSYNC, fd, 0, 0));
	say("write_ns", now_ns() - start);
	sys(SYS_CLOSE, fd, 0, 0);

	int direct = 1;
	fd = sys(SYS_OPEN, path, O_RDWR | O_DIRECT, 0);
	if (fd == -EINVAL) { /* a filesystem without O_DIRECT (overlayfs on older kernels) */
		direct = 0;
		fd = sys(SYS_OPEN, path, O_RDWR, 0);
	}
	check(fd);
	start = now_ns();
	long got = 0;
	long n;
	while ((n = check(sys(SYS_READ, fd, buf, BLOCK))) > 0)
		got += n;
	say("read_ns", now_ns() - start);
	say("read_bytes", got);
	say("direct", direct);

	long blocks = mib * (BLOCK / 4096);
	start = now_ns();
	for (int i = 0; i < RANDOM_OPS; i++) {
		long at = (long)(next_random() % (unsigned long)blocks) * 4096;
		check(sys6(SYS_PWRITE, fd, (long)buf, 4096, at, 0));
		check(sys(SYS_FDATASYNC, fd, 0, 0));
	}
	say("randwrite_ns", now_ns() - start);
	start = now_ns();
	for (int i = 0; i < RANDOM_OPS; i++) {
		long at = (long)(next_random() % (unsigned long)blocks) * 4096;
		check(sys6(SYS_PREAD, fd, (long)buf, 4096, at, 0));
	}
	say("randread_ns", now_ns() - start);
	say("random_ops", RANDOM_OPS);
	sys(SYS_CLOSE, fd, 0, 0);
	sys(SYS_UNLINK, path, 0, 0);
}

struct sockaddr_in4 {
	unsigned short family;
	unsigned short port;
	unsigned int addr;
	char zero[8];
};

static struct sockaddr_in4 address(const char *ip, long port)
{
	struct sockaddr_in4 sa;
	memset(&sa, 0, sizeof sa);
	sa.family = 2; /* AF_INET */
	sa.port = (unsigned short)(((port & 0xff) << 8) | ((port >> 8) & 0xff));
	unsigned int parts[4] = {0, 0, 0, 0};
	for (int i = 0; i < 4 && ip; i++) {
		parts[i] = (unsigned int)number(ip);
		while (*ip && *ip != '.')
			ip++;
		ip = *ip ? ip + 1 : 0;
	}
	sa.addr = parts[0] | parts[1] << 8 | parts[2] << 16 | parts[3] << 24;
	return sa;
}

static long tcp_socket(void)
{
	long fd = check(sys(SYS_SOCKET, 2 /* AF_INET */, 1 /* SOCK_STREAM */, 0));
	int one = 1;
	sys6(SYS_SETSOCKOPT, fd, 6 /* IPPROTO_TCP */, 1 /* TCP_NODELAY */, (long)&one, 4);
	sys6(SYS_SETSOCKOPT, fd, 1 /* SOL_SOCKET */, 2 /* SO_REUSEADDR */, (long)&one, 4);
	return fd;
}

static void full_write(long fd, const char *data, long n)
{
	while (n > 0) {
		long put = check(sys(SYS_WRITE, fd, data, n));
		data += put;
		n -= put;
	}
}

static void serve(long port)
{
	long fd = tcp_socket();
	struct sockaddr_in4 sa = address("0.0.0.0", port);
	check(sys(SYS_BIND, fd, &sa, sizeof sa));
	check(sys(SYS_LISTEN, fd, 1, 0));
	say("listening", port);
	long conn = check(sys(SYS_ACCEPT, fd, 0, 0));
	char c;
	/* Round trips: one byte back for each, until 'S' starts the stream. */
	while (check(sys(SYS_READ, conn, &c, 1)) == 1 && c != 'S')
		full_write(conn, &c, 1);
	while (check(sys(SYS_READ, conn, buf, BLOCK)) > 0) {
	}
	full_write(conn, "D", 1);
	sys(SYS_CLOSE, conn, 0, 0);
}

static void client(const char *ip, long port, long trips, long mib)
{
	long fd = tcp_socket();
	struct sockaddr_in4 sa = address(ip, port);
	check(sys(SYS_CONNECT, fd, &sa, sizeof sa));
	char c = 'p';
	long start = now_ns();
	for (long i = 0; i < trips; i++) {
		full_write(fd, &c, 1);
		check(sys(SYS_READ, fd, &c, 1));
	}
	say("rtt_ns", now_ns() - start);
	say("trips", trips);
	full_write(fd, "S", 1);
	start = now_ns();
	for (long i = 0; i < mib; i++)
		full_write(fd, buf, BLOCK);
	check(sys(48 /* SYS_SHUTDOWN */, fd, 1 /* SHUT_WR */, 0));
	check(sys(SYS_READ, fd, &c, 1));
	say("send_ns", now_ns() - start);
	say("sent_bytes", mib * BLOCK);
}

__attribute__((used)) void probe_main(long *stack)
{
	long argc = stack[0];
	char **argv = (char **)(stack + 1);
	if (argc >= 3 && same(argv[1], "cpu"))
		cpu(number(argv[2]));
	else if (argc >= 3 && same(argv[1], "syscall"))
		syscalls(number(argv[2]));
	else if (argc >= 4 && same(argv[1], "disk"))
		disk(argv[2], number(argv[3]));
	else if (argc >= 3 && same(argv[1], "serve"))
		serve(number(argv[2]));
	else if (argc >= 6 && same(argv[1], "client"))
		client(argv[2], number(argv[3]), number(argv[4]), number(argv[5]));
	else
		quit(EINVAL);
	quit(0);
}

__asm__(".global _start\n"
	"_start:\n"
	"  mov %rsp, %rdi\n"
	"  and $-16, %rsp\n"
	"  call probe_main\n"
	"  hlt\n");

/* reseed: makes the guest kernel's random generator take a new key from its input pool at
 * once (the RNDRESEEDCRNG ioctl), just after gureum wrote new entropy into that pool through
 * the guest agent. A restored or cloned machine otherwise goes on from the generator state it
 * was saved with, as every other clone of it does, until the kernel's next timed reseed.
 *
 * Built into the tiny image (images/build.py) with no libc: a few system calls, so that under
 * TCG it costs next to nothing to load and translate (perl, which Debian guests use instead,
 * costs tenths of a second there). Exits 0 once reseeded, else with the errno: 22 or 25 (a
 * kernel before 4.17), 61 (the generator is not ready yet), 1 (not root).
 */

#define SYS_OPEN 2
#define SYS_IOCTL 16
#define SYS_EXIT 60
#define RNDRESEEDCRNG 0x5207 /* _IO('R', 0x07) */

static long syscall3(long n, long a, long b, long c)
{
	long ret;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c)
			 : "rcx", "r11", "memory");
	return ret;
}

void _start(void)
{
	long fd = syscall3(SYS_OPEN, (long)"/dev/urandom", 0 /* O_RDONLY */, 0);
	long ret = fd < 0 ? fd : syscall3(SYS_IOCTL, fd, RNDRESEEDCRNG, 0);
	syscall3(SYS_EXIT, ret < 0 ? -ret : 0, 0, 0);
	for (;;) {
	}
}

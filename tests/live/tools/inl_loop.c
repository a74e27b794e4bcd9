/* rdv live test: time N `inl` of a register of every PCI function with the given vendor:device, in the guest.
 *
 *   inl_loop VENDOR DEVICE REG [N]     e.g. inl_loop 0x1274 0x5000 0x04 1000   (ES1370 STATUS)
 *
 * For each matching function (sysfs order) it enables I/O decoding (no driver needs to be bound), reads BAR0's
 * port base from sysfs, then times each of N `inl` with CLOCK_MONOTONIC and prints one line:
 *   RDV-INL slot=0000:00:05.0 n=1000 p50_ns=... p99_ns=... mean_ns=... min_ns=... value=0x... same=1
 * `same` is 1 when every read returned the first value. Built static by the live test (gcc -static).
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <time.h>
#include <unistd.h>

static unsigned long read_hex(const char *path) {
    char buf[64] = {0};
    int fd = open(path, O_RDONLY);
    if (fd < 0) return ~0UL;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    return n > 0 ? strtoul(buf, NULL, 16) : ~0UL;
}

static int cmp(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s VENDOR DEVICE REG [N]\n", argv[0]);
        return 2;
    }
    unsigned long vendor = strtoul(argv[1], NULL, 0), device = strtoul(argv[2], NULL, 0);
    unsigned long reg = strtoul(argv[3], NULL, 0);
    int n = argc > 4 ? atoi(argv[4]) : 1000;
    if (n <= 0 || n > 1000000 || iopl(3) != 0) {
        perror("iopl");
        return 1;
    }
    long *t = calloc(n, sizeof *t);
    DIR *d = opendir("/sys/bus/pci/devices");
    struct dirent *e;
    char path[512];
    int found = 0;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/vendor", e->d_name);
        if (read_hex(path) != vendor) continue;
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/device", e->d_name);
        if (read_hex(path) != device) continue;
        /* I/O decoding on: the command register's bit 0, through config space */
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/config", e->d_name);
        int cfg = open(path, O_RDWR);
        unsigned short cmd = 0;
        if (cfg < 0 || pread(cfg, &cmd, 2, 4) != 2) { perror(path); return 1; }
        cmd |= 1;
        if (pwrite(cfg, &cmd, 2, 4) != 2) { perror(path); return 1; }
        close(cfg);
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/resource", e->d_name);
        FILE *f = fopen(path, "r");
        unsigned long start = 0, end = 0, flags = 0;
        if (!f || fscanf(f, "%lx %lx %lx", &start, &end, &flags) != 3 || !(flags & 0x100)) {
            fprintf(stderr, "%s: BAR0 is not an I/O BAR\n", e->d_name);
            return 1;
        }
        fclose(f);
        unsigned short port = (unsigned short)(start + reg);
        unsigned int first = inl(port), value = first;
        int same = 1;
        for (int i = 0; i < n; i++) {
            long a = now_ns();
            value = inl(port);
            t[i] = now_ns() - a;
            same &= value == first;
        }
        long sum = 0;
        for (int i = 0; i < n; i++) sum += t[i];
        qsort(t, n, sizeof *t, cmp);
        printf("RDV-INL slot=%s n=%d p50_ns=%ld p99_ns=%ld mean_ns=%ld min_ns=%ld value=0x%08x same=%d\n", e->d_name,
               n, t[n / 2], t[n * 99 / 100], sum / n, t[0], first, same);
        found++;
    }
    if (!found) fprintf(stderr, "no PCI function %04lx:%04lx\n", vendor, device);
    return found ? 0 : 1;
}

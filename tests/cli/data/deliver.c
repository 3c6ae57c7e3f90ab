/* Trusted test program: append the message on stdin to ./delivered.mbox (cwd = owner's home). */
#include <fcntl.h>
#include <unistd.h>

int main(void) {
    char buf[8192];
    ssize_t n;
    int fd = open("delivered.mbox", O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd < 0)
        return 73; /* EX_CANTCREAT, silently: any output would fail the delivery */
    while ((n = read(0, buf, sizeof buf)) > 0)
        if (write(fd, buf, (size_t)n) != n)
            return 74;
    return close(fd) == 0 ? 0 : 74;
}

/* Trusted test program that always fails: says why on stderr, exits EX_CANTCREAT (73 → 5.2.0). */
#include <stdio.h>
#include <unistd.h>

int main(void) {
    char buf[8192];
    while (read(0, buf, sizeof buf) > 0)
        ;
    fputs("mailbox quota exceeded for this test account\n", stderr);
    return 73;
}

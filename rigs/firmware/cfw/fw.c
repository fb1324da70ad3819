/*
 * fw.c - a tiny x86_64 firmware in C for "unit tests for firmware functions":
 * rigs/firmware/cfw.yaml boots it once to main (snapshot point `at-main`);
 * every rigs/firmware/cfw-*.yaml child then calls one of these functions with
 * its own arguments and checks the return value and memory.
 *
 * Built freestanding with general registers only (kvm_pvm cannot run x87/SSE
 * in a guest): see rigs/Makefile.
 */
#include <stddef.h>
#include <stdint.h>

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }

void serial_puts(const char *s) {
    while (*s)
        outb(0x3f8, (uint8_t)*s++);
}

/* CRC-8, polynomial 0x07, initial value 0 (CRC-8/SMBUS): "123456789" -> 0xf4. */
uint8_t crc8(const uint8_t *p, size_t n) {
    uint8_t crc = 0;
    while (n--) {
        crc ^= *p++;
        for (int i = 0; i < 8; i++)
            crc = (uint8_t)((crc & 0x80) ? (crc << 1) ^ 0x07 : crc << 1);
    }
    return crc;
}

/* a + b, saturated at 0xffffffff. */
uint32_t add_sat(uint32_t a, uint32_t b) {
    uint32_t s = a + b;
    return s < a ? 0xffffffffu : s;
}

size_t fw_strlen(const char *s) {
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

/* Parse up to 8 hex digits into *out; returns the digits read, -1 on none. */
int parse_hex(const char *s, uint32_t *out) {
    uint32_t v = 0;
    int n = 0;
    for (; n < 8; n++, s++) {
        char c = *s;
        uint32_t d;
        if (c >= '0' && c <= '9')
            d = (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            d = (uint32_t)(c - 'A' + 10);
        else
            break;
        v = v << 4 | d;
    }
    if (n == 0)
        return -1;
    *out = v;
    return n;
}

/* Reverse n bytes in place. */
void reverse(uint8_t *p, size_t n) {
    for (size_t i = 0; i + 1 < n - i; i++) {
        uint8_t t = p[i];
        p[i] = p[n - 1 - i];
        p[n - 1 - i] = t;
    }
}

int main(void) {
    serial_puts("cfw: main\n");
    static const uint8_t check[] = "123456789";
    return crc8(check, 9) == 0xf4 ? 0 : 1;
}

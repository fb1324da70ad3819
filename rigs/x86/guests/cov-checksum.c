/*
 * cov-checksum.c - a CRC-32 in C, the coverage example with the rig's own
 * breakpoints and a watchpoint (their hit counts must not change under
 * `kvmrig run --coverage`).
 *
 * Mode: long. Built with -g (make -C rigs), linked by c-guest.ld at 0x10000,
 * entry `_start`, which calls main() and halts with its result in EAX.
 *
 * What it does: computes the CRC-32 (IEEE, reflected, polynomial
 * 0xedb88320) of "kvmrig" bit by bit, stores it to `result` and returns it
 * (0x5cb3fca0, as zlib.crc32). A length of zero would take the `empty` path, which this
 * guest never does.
 *
 * What its rig checks: crc_byte() is called 6 times (a `kind: sw`
 * breakpoint), the loop in main() turns 6 times (a `kind: hw` breakpoint),
 * `result` is written once (a watchpoint), EAX and `result` hold the CRC,
 * and coverage: crc_byte executed, empty not.
 */
static const char message[] = "kvmrig";

unsigned int result;
unsigned int empty_inputs;

__attribute__((noinline)) unsigned int crc_byte(unsigned int crc, unsigned char byte)
{
        crc ^= byte;
        for (int bit = 0; bit < 8; bit++) {
                if (crc & 1)
                        crc = (crc >> 1) ^ 0xedb88320u;
                else
                        crc >>= 1;
        }
        return crc;
}

__attribute__((noinline)) unsigned int empty(void)
{
        empty_inputs++;
        return 0;
}

__attribute__((noinline)) unsigned int checksum(const char *data, unsigned int len)
{
        if (len == 0)
                return empty();
        unsigned int crc = 0xffffffffu;
        for (unsigned int i = 0; i < len; i++)
                crc = crc_byte(crc, (unsigned char)data[i]);
        return ~crc;
}

unsigned int main(void)
{
        result = checksum(message, sizeof message - 1);
        return result;
}

/* The entry: no C runtime, the rig sets up the stack. */
__asm__(".pushsection .text.start, \"ax\"\n"
        ".globl _start\n"
        "_start:\n"
        "        call main\n"
        "        hlt\n"
        ".popsection\n");

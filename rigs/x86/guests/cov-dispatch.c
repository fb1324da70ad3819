/*
 * cov-dispatch.c - a command interpreter in C, the coverage example.
 *
 * Mode: long. Built with -g (make -C rigs), linked by c-guest.ld at 0x10000,
 * entry `_start`, which calls main() and halts with its result in EAX.
 *
 * What it does: runs the little `script` below through a dispatcher: '+'
 * adds, '-' subtracts (an underflow would panic), any other command goes to
 * the error handler, '.' ends the script. It prints what it does on the
 * serial port 0x3f8 and returns the total (5 + 7 - 2 = 10).
 *
 * What its rig checks: exit hlt with EAX == 10, one error counted, the
 * console, and coverage: handle_error (the error path) executed, panic not.
 * With `kvmrig run --coverage` its lines show up in the lcov/Cobertura
 * report: the underflow branch and panic() are the uncovered ones.
 */
#define COM1 0x3f8

struct cmd {
        char op;
        unsigned int arg;
};

static const struct cmd script[] = {
        {'+', 5}, {'+', 7}, {'?', 0}, {'-', 2}, {'.', 0},
};

unsigned int total;
unsigned int errors;

static inline void outb(unsigned short port, unsigned char value)
{
        __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static void print(const char *s)
{
        while (*s)
                outb(COM1, *s++);
}

__attribute__((noinline, noreturn)) void panic(const char *why)
{
        print("panic: ");
        print(why);
        for (;;)
                __asm__ volatile("hlt");
}

__attribute__((noinline)) void handle_add(unsigned int n)
{
        total += n;
        print("add\n");
}

__attribute__((noinline)) void handle_sub(unsigned int n)
{
        if (n > total)
                panic("underflow\n");
        total -= n;
        print("sub\n");
}

__attribute__((noinline)) void handle_error(char op)
{
        errors++;
        print("bad command ");
        outb(COM1, op);
        print("\n");
}

int main(void)
{
        for (const struct cmd *c = script; c->op != '.'; c++) {
                switch (c->op) {
                case '+':
                        handle_add(c->arg);
                        break;
                case '-':
                        handle_sub(c->arg);
                        break;
                default:
                        handle_error(c->op);
                }
        }
        print("done\n");
        return total;
}

/* The entry: no C runtime, the rig sets up the stack. */
__asm__(".pushsection .text.start, \"ax\"\n"
        ".globl _start\n"
        "_start:\n"
        "        call main\n"
        "        hlt\n"
        ".popsection\n");

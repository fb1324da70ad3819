/*
 * start.S - entry of the C firmware (long mode, as kvmrig's `cpu: {mode: long}`
 * starts it): a stack, then main(); main's return value goes to the exit
 * device at port 0xf4. `unit_return` is where a unit test's call returns to
 * (the rig's `call: {return_to: sym:unit_return}`): a HLT ends that run.
 */
        .code64
        .section .text.start, "ax"
        .globl  _start
_start:
        mov     $stack_top, %rsp
        call    main
        out     %al, $0xf4
        hlt
        .globl  unit_return
unit_return:
        hlt
1:      jmp     1b

        .bss
        .balign 16
        .space  0x2000
stack_top:

        .section .note.GNU-stack, "", @progbits

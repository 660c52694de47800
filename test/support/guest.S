/*
 * A tiny multiboot (v1) guest for the VM tests: it counts in RAM and prints the count on COM1.
 *
 * Built by test/support/guest.ts with `as --32` and `ld -m elf_i386`; QEMU boots it with
 * `-kernel FILE` (QEMU's multiboot loader reads the ELF). Every round it
 *   - increments `count` (a 32-bit word in RAM),
 *   - stamps the count into one page of `scratch` (page count % SCRATCH_PAGES), so a run dirties a
 *     few pages that `save --update` must find,
 *   - prints "count N\n" on the serial port (0x3f8), then halts for TICKS ticks of the PIT (100 Hz),
 *     so an idle guest costs the host (TCG) next to no CPU.
 * A guest restored from a snapshot continues from the saved count: the first line it prints after
 * the restore is larger than the last one printed before the save.
 */
        .set MB_MAGIC, 0x1BADB002
        .set MB_FLAGS, 0
        .set COM1, 0x3f8
        .set SCRATCH_PAGES, 16
        .set TICKS, 5
        .set PIT_DIVISOR, 11932

        .section .text
        .code32
        .align 4
multiboot_header:
        .long MB_MAGIC
        .long MB_FLAGS
        .long -(MB_MAGIC + MB_FLAGS)

        .globl _start
_start:
        cli
        /* our own flat GDT (multiboot leaves GDTR undefined; interrupts need it) */
        lgdt gdt_desc
        ljmp $0x08, $reload
reload:
        movw $0x10, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %fs
        movw %ax, %gs
        movw %ax, %ss
        movl $stack_top, %esp

        /* IDT: every one of the first 48 vectors goes to `tick` (EOI + iret) */
        movl $idt, %edi
        movl $48, %ecx
6:      movl $tick, %eax
        movw %ax, (%edi)
        movw $0x08, 2(%edi)
        movw $0x8e00, 4(%edi)
        shrl $16, %eax
        movw %ax, 6(%edi)
        addl $8, %edi
        loop 6b
        lidt idt_desc

        /* PIC: IRQs at vectors 0x20-0x2f, only IRQ0 (the PIT) unmasked */
        movb $0x11, %al
        outb %al, $0x20
        outb %al, $0xa0
        movb $0x20, %al
        outb %al, $0x21
        movb $0x28, %al
        outb %al, $0xa1
        movb $4, %al
        outb %al, $0x21
        movb $2, %al
        outb %al, $0xa1
        movb $1, %al
        outb %al, $0x21
        outb %al, $0xa1
        movb $0xfe, %al
        outb %al, $0x21
        movb $0xff, %al
        outb %al, $0xa1

        /* PIT channel 0: rate generator at 100 Hz */
        movb $0x34, %al
        outb %al, $0x43
        movw $PIT_DIVISOR, %ax
        outb %al, $0x40
        movb %ah, %al
        outb %al, $0x40

        movl $0, count
        sti

round:
        incl count
        movl count, %eax
        /* stamp the count into scratch page (count % SCRATCH_PAGES), at a word that moves too */
        movl %eax, %ebx
        andl $(SCRATCH_PAGES - 1), %ebx
        shll $12, %ebx
        movl %eax, %ecx
        andl $1023, %ecx
        movl %eax, scratch(%ebx, %ecx, 4)

        movl $prefix, %esi
        call puts
        movl count, %eax
        call putdec
        movb $'\n', %al
        call putc

        movl $TICKS, %ecx
1:      hlt
        decl %ecx
        jnz 1b
        jmp round

/* tick: the interrupt handler (end of interrupt to the master PIC) */
tick:
        pushl %eax
        movb $0x20, %al
        outb %al, $0x20
        popl %eax
        iret

/* putc: writes %al to COM1 once its transmit holding register is empty */
putc:
        pushl %edx
        pushl %eax
        movw $(COM1 + 5), %dx
2:      inb %dx, %al
        testb $0x20, %al
        jz 2b
        popl %eax
        movw $COM1, %dx
        outb %al, %dx
        popl %edx
        ret

/* puts: writes the NUL-terminated string at %esi */
puts:
        lodsb
        testb %al, %al
        jz 3f
        call putc
        jmp puts
3:      ret

/* putdec: writes %eax in decimal */
putdec:
        movl $10, %ebx
        xorl %ecx, %ecx
4:      xorl %edx, %edx
        divl %ebx
        pushl %edx
        incl %ecx
        testl %eax, %eax
        jnz 4b
5:      popl %eax
        addb $'0', %al
        call putc
        loop 5b
        ret

        .section .data
        .align 8
gdt:    .quad 0
        .quad 0x00cf9a000000ffff        /* 0x08: flat 32-bit code */
        .quad 0x00cf92000000ffff        /* 0x10: flat 32-bit data */
gdt_desc:
        .word 3 * 8 - 1
        .long gdt
idt_desc:
        .word 48 * 8 - 1
        .long idt
prefix: .asciz "count "
        .align 4
count:  .long 0

        .section .bss
        .align 8
idt:    .skip 48 * 8
        .align 4096
scratch:
        .skip 4096 * SCRATCH_PAGES
        .skip 16384
stack_top:

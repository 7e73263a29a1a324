//! The xAPIC MMIO trap decoder, on the forms Linux's xAPIC code uses.

use crate::mmio::{Access, DecodeError, Gpr, decode};

const EAX: Gpr = Gpr {
    index: 0,
    size: 4,
    high8: false,
};
const ESI: Gpr = Gpr {
    index: 6,
    size: 4,
    high8: false,
};

altinj_ktest::suite! {
    fn mov_r32_from_mem_is_a_4_byte_read_into_the_register() {
        // mov eax, [rdi - 0xA03000] (native_apic_mem_read's readl)
        let insn = decode(&[0x8B, 0x87, 0x00, 0xD0, 0x5F, 0xFF, 0xC3]).unwrap();
        assert_eq!(insn.size, 4);
        assert_eq!(insn.len, 6);
        assert_eq!(insn.access, Access::Read { dest: EAX });
    }

    fn mov_mem_from_r32_is_a_4_byte_write_of_the_register() {
        // mov [rdi - 0xA03000], esi (native_apic_mem_write)
        let insn = decode(&[0x89, 0xB7, 0x00, 0xD0, 0x5F, 0xFF]).unwrap();
        assert_eq!((insn.size, insn.len), (4, 6));
        assert_eq!(insn.access, Access::WriteReg { src: ESI });
        // mov [rdi], r8d: REX.R selects r8
        let insn = decode(&[0x44, 0x89, 0x07]).unwrap();
        assert_eq!(insn.access, Access::WriteReg { src: Gpr { index: 8, size: 4, high8: false } });
        assert_eq!(insn.len, 3);
    }

    fn mov_mem_from_imm32_is_a_write_of_the_immediate() {
        // mov dword [0xFEE000B0], 0 (an EOI with a constant)
        let insn = decode(&[0xC7, 0x04, 0x25, 0xB0, 0x00, 0xE0, 0xFE, 0, 0, 0, 0]).unwrap();
        assert_eq!((insn.size, insn.len), (4, 11));
        assert_eq!(insn.access, Access::WriteImm { value: 0 });
        // mov dword [rax + 0x380], 0x12345678 (a timer count)
        let insn = decode(&[0xC7, 0x80, 0x80, 0x03, 0, 0, 0x78, 0x56, 0x34, 0x12]).unwrap();
        assert_eq!(insn.access, Access::WriteImm { value: 0x1234_5678 });
    }

    fn xchg_with_memory_is_an_exchange() {
        // xchg [rdi - 0xA03000], esi (the 11AP erratum path)
        let insn = decode(&[0x87, 0xB7, 0x00, 0xD0, 0x5F, 0xFF]).unwrap();
        assert_eq!(insn.access, Access::Exchange { reg: ESI });
    }

    fn narrow_and_zero_extending_reads_keep_their_sizes() {
        // movzx eax, word [rdi]
        let insn = decode(&[0x0F, 0xB7, 0x07]).unwrap();
        assert_eq!((insn.size, insn.access), (2, Access::Read { dest: EAX }));
        // mov ah, [rdi]
        let insn = decode(&[0x8A, 0x27]).unwrap();
        assert_eq!(insn.access, Access::Read { dest: Gpr { index: 0, size: 1, high8: true } });
        // mov rcx, [rdi]
        let insn = decode(&[0x48, 0x8B, 0x0F]).unwrap();
        assert_eq!((insn.size, insn.access), (8, Access::Read { dest: Gpr { index: 1, size: 8, high8: false } }));
    }

    fn other_memory_instructions_are_unsupported() {
        assert_eq!(decode(&[0x01, 0x07]), Err(DecodeError::Unsupported)); // add [rdi], eax
        assert_eq!(decode(&[0xF3, 0xA5]), Err(DecodeError::Unsupported)); // rep movsd
        assert_eq!(decode(&[0x0F, 0x0B]), Err(DecodeError::Unsupported)); // ud2
        assert_eq!(decode(&[0x89, 0xC0]), Err(DecodeError::Unsupported)); // mov eax, eax
    }

    fn cut_or_invalid_bytes_are_invalid() {
        assert_eq!(decode(&[0x8B]), Err(DecodeError::Invalid));
        assert_eq!(decode(&[]), Err(DecodeError::Invalid));
        assert_eq!(decode(&[0x06]), Err(DecodeError::Invalid)); // push es: not in 64-bit mode
    }

    fn register_writes_merge_as_the_cpu_does() {
        let old = 0x1111_2222_3333_4444;
        assert_eq!(EAX.merge(old, 0xDEAD_BEEF), 0xDEAD_BEEF);
        let ah = Gpr { index: 0, size: 1, high8: true };
        assert_eq!(ah.merge(old, 0xAB), 0x1111_2222_3333_AB44);
        assert_eq!(ah.read(old), 0x44);
        let ax = Gpr { index: 0, size: 2, high8: false };
        assert_eq!(ax.merge(old, 0x1_BEEF), 0x1111_2222_3333_BEEF);
        assert_eq!(EAX.read(old), 0x3333_4444);
    }
}

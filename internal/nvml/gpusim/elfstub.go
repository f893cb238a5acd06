package gpusim

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"runtime"
)

// elfMachine is the ELF machine of this host's libraries.
func elfMachine() elf.Machine {
	if runtime.GOARCH == "arm64" {
		return elf.EM_AARCH64
	}
	return elf.EM_X86_64
}

// stubSharedObject returns the smallest ELF shared object that tools
// reading a library's SONAME accept (nvcdi creates the SONAME symlinks of
// driver libraries from it): a .dynamic section with DT_SONAME and its
// string table, no code.
func stubSharedObject(soname string) []byte {
	const (
		ehSize  = 64
		shSize  = 64
		dynSize = 16
	)
	dynstr := append(append([]byte{0}, soname...), 0)
	shstr := []byte("\x00.dynstr\x00.dynamic\x00.shstrtab\x00")
	align := func(n int) int { return (n + 7) &^ 7 }

	dynstrOff := ehSize
	dynOff := align(dynstrOff + len(dynstr))
	dyn := []elf.Dyn64{
		{Tag: int64(elf.DT_SONAME), Val: 1},
		{Tag: int64(elf.DT_STRTAB), Val: uint64(dynstrOff)},
		{Tag: int64(elf.DT_STRSZ), Val: uint64(len(dynstr))},
		{Tag: int64(elf.DT_NULL)},
	}
	shstrOff := dynOff + len(dyn)*dynSize
	shOff := align(shstrOff + len(shstr))

	var ident [elf.EI_NIDENT]byte
	copy(ident[:], elf.ELFMAG)
	ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	hdr := elf.Header64{
		Ident:     ident,
		Type:      uint16(elf.ET_DYN),
		Machine:   uint16(elfMachine()),
		Version:   uint32(elf.EV_CURRENT),
		Shoff:     uint64(shOff),
		Ehsize:    ehSize,
		Phentsize: 56,
		Shentsize: shSize,
		Shnum:     4,
		Shstrndx:  3,
	}
	sections := []elf.Section64{
		{},
		{Name: 1, Type: uint32(elf.SHT_STRTAB), Flags: uint64(elf.SHF_ALLOC), Addr: uint64(dynstrOff), Off: uint64(dynstrOff), Size: uint64(len(dynstr)), Addralign: 1},
		{Name: 9, Type: uint32(elf.SHT_DYNAMIC), Flags: uint64(elf.SHF_ALLOC | elf.SHF_WRITE), Addr: uint64(dynOff), Off: uint64(dynOff), Size: uint64(len(dyn) * dynSize), Link: 1, Addralign: 8, Entsize: dynSize},
		{Name: 18, Type: uint32(elf.SHT_STRTAB), Off: uint64(shstrOff), Size: uint64(len(shstr)), Addralign: 1},
	}

	var b bytes.Buffer
	pad := func(to int) { b.Write(make([]byte, to-b.Len())) }
	// Writes to a bytes.Buffer cannot fail.
	_ = binary.Write(&b, binary.LittleEndian, hdr)
	b.Write(dynstr)
	pad(dynOff)
	_ = binary.Write(&b, binary.LittleEndian, dyn)
	b.Write(shstr)
	pad(shOff)
	_ = binary.Write(&b, binary.LittleEndian, sections)
	return b.Bytes()
}

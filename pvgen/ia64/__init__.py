"""IA-64 bundle codec for the instruction subset the pvgen IA64 spec uses.

The package turns IA-64 assembly text into 16-byte bundles and back, without the GNU tools:

- `bundle`: the 128-bit bundle layout and the template table (units, stops, reserved values);
- `insn`: the instruction object model and the table of instruction forms (field layouts);
- `decoder`: bytes to bundles of instructions (unknown encodings become `UnknownInstruction`);
- `encoder`: instructions to bytes, and a small assembler for the GNU as subset the spec uses,
  with GAS's template selection and nop filling;
- `objdump`: the text `ia64-linux-gnu-objdump -D -b binary -m ia64` prints for the same bytes.
"""

"""Checker: resolves names across the whole spec, validates it, and builds the frozen IR."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import attrs

from pvgen import ctype, ir
from pvgen.diagnostics import Diagnostics, Note, expected_one_of
from pvgen.effects import check_effect
from pvgen.loader import LoadedSpec
from pvgen.shape import Block, names_of
from pvgen.source import SourceSpan
from pvgen.syntax import Entry, Param, Value

TOP_LEVEL = ("arch", "group", "hypervisor", "include", "iommu", "macro", "mask", "typedef", "yield")
ARCH_PROPERTIES = (
    "pointer_size",
    "data_model",
    "registers",
    "args",
    "return",
    "caller_saved",
    "callee_saved",
    "callee_save_clobbers",
    "clobber_bits",
    "site_call",
    "site_jump",
    "site_size",
    "direct_call_size",
    "site_type_bits",
    "nops",
    "pad_prefix",
    "pad_prefix_limit",
    "assembler",
    "template",
    "const",
    "identity",
    "isa",
)
ISAS = ("ia64", "x86_64")  # instruction sets pvgen can assemble, decode and patch
HYPERVISOR_PROPERTIES = ("arches", "detect", "execution", "paravirt_enabled", "native_fallback", "const")
OP_PROPERTIES = ("category", "transfer", "callee_save", "clobbers", "patch_type", "override", "effect")
MACRO_KINDS = ("clobbers", "gr", "kr", "pr")
MACRO_ROLES = ("clobber", "in", "out")
EXECUTIONS = ("bare", "hvm", "pv")
DETECT_METHODS = ("boot_entry", "cpuid", "default")
IMPL_CALL_PRESERVING = "call+callee_save"  # parsed form only; the IR says call, preserves_registers
IMPL_ASM_OUT_OF_LINE = "asm+out_of_line"  # parsed form only; the IR says asm, out_of_line
# Words an op, variant or data block uses for its own properties: no hypervisor may take them.
RESERVED_WORDS = frozenset({"arch", "via", "variant", "clobbers", "struct", "override"}) | frozenset(
    ("category", "transfer", "callee_save", "patch_type")
)
CLOBBER_FIELD_BITS = 16  # the u16 clobbers field of a site record
MODEL_POINTER_SIZE = {"LP64": 8, "ILP32": 4}
_PARAM_REFERENCE = re.compile(r"\\([A-Za-z_][A-Za-z0-9_]*)")


def _first_line(entry: Entry) -> str:
    return "\n".join(entry.docs)


class Checker:
    """Runs every check over the loaded files and returns the IR when there is no error."""

    def __init__(self, loaded: LoadedSpec, diagnostics: Diagnostics) -> None:
        self.loaded = loaded
        self.diagnostics = diagnostics
        self.arches: dict[str, ir.Arch] = {}
        self.hypervisors: dict[str, ir.Hypervisor] = {}
        self.typedefs: dict[str, ir.Typedef] = {}
        self.typedef_words: dict[str, list[str]] = {}
        self.group_entries: dict[tuple[str, str], Entry] = {}
        self.group_names: dict[str, list[str]] = {}
        self.asm_macro_ops: dict[tuple[str, str], SourceSpan] = {}
        self.via_targets: set[tuple[str, str]] = set()
        self._pending_fallbacks: list[tuple[str, list[Value]]] = []
        # Names declared but rejected: later references to them are not errors of their own.
        self.declared_arches: set[str] = set()
        self.declared_hypervisors: set[str] = set()
        self.template_spans: dict[tuple[str, str], SourceSpan] = {}

    # -- helpers ---------------------------------------------------------------------------

    def error(self, span: SourceSpan, message: str, *notes: Note) -> None:
        self.diagnostics.error(span, message, *notes)

    def _need_doc(self, entry: Entry, what: str) -> None:
        if not entry.docs:
            self.error(entry.keyword_span, f"{what} has no doc comment; add a '///' line above it")

    def _declared_name(self, entry: Entry, what: str) -> Value | None:
        """The single name of `arch x86_64 { ... }` and similar block headers."""
        values = entry.values
        if not entry.is_block:
            self.error(entry.span, f"'{entry.keyword}' declares {what} and needs a body in braces")
            return None
        if entry.params is not None or len(values) != 1 or values[0].kind != "name":
            self.error(entry.keyword_span, f"'{entry.keyword}' takes one name: '{entry.keyword} NAME {{ ... }}'")
            return None
        return values[0]

    def _unique(self, what: str, items: Iterable[tuple[str, SourceSpan]], where: str = "") -> None:
        first: dict[str, SourceSpan] = {}
        place = f" {where}" if where else ""
        for name, span in items:
            if name in first:
                self.error(span, f"duplicate {what} '{name}'{place}", Note("first defined here", first[name]))
            else:
                first[name] = span

    def _plain_name(self, name: Value, what: str) -> bool:
        """A C identifier that is not a C keyword: the name of an op, field or macro."""
        if "." in name.text or ctype.is_c_word(name.text) or name.text in ctype.BUILTIN_NAMES:
            self.error(name.span, f"'{name.text}' cannot name {what}; use a C identifier that is not a type or keyword")
            return False
        return True

    def _known(self, value: Value, allowed: Iterable[str], what: str, where: str = "") -> bool:
        options = list(allowed)
        if value.value in options:
            return True
        if what.startswith("arch") and value.value in self.declared_arches:
            return False  # declared, but its declaration is in error (reported there)
        place = f" {where}" if where else ""
        self.error(value.span, f"unknown {what} '{value.text}'{place}; {expected_one_of(options)}")
        return False

    def _arch_of(self, block: Block) -> ir.Arch | None:
        value = block.name("arch", "the architecture it belongs to")
        if value is None:
            return None
        if value.value in self.declared_arches and value.value not in self.arches:
            return None  # its own declaration is in error, reported there
        if not self._known(value, self.arches, "arch"):
            return None
        return self.arches[str(value.value)]

    def _registers(self, arch_name: str, registers: Sequence[str], values: Sequence[Value]) -> tuple[str, ...]:
        for value in values:
            if value.value not in registers:
                self.error(value.span, f"unknown register '{value.text}' on {arch_name}; {expected_one_of(registers)}")
        return tuple(str(v.value) for v in values)

    def _hypervisors_of(self, arch: str) -> list[str]:
        return sorted(h.name for h in self.hypervisors.values() if arch in h.arches)

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> ir.Spec | None:
        by_kind: dict[str, list[Entry]] = {k: [] for k in TOP_LEVEL}
        for tree in self.loaded.trees:
            for entry in tree.entries:
                if entry.keyword in by_kind:
                    by_kind[entry.keyword].append(entry)
                else:
                    self.error(
                        entry.keyword_span,
                        f"unknown declaration '{entry.keyword}'; {expected_one_of(TOP_LEVEL)}",
                    )
        for entry in by_kind["arch"]:
            self._arch(entry)
        self._unique("arch", [(str(v.value), v.span) for e in by_kind["arch"] if (v := _name(e))])
        for entry in by_kind["hypervisor"]:
            self._hypervisor(entry)
        self._unique("hypervisor", [(str(v.value), v.span) for e in by_kind["hypervisor"] if (v := _name(e))])
        defaults: dict[str, ir.Detection] = {}
        for hypervisor in sorted(self.hypervisors.values(), key=lambda h: h.span):
            for detection in hypervisor.detections:
                if detection.method != "default":
                    continue
                if detection.arch in defaults and defaults[detection.arch] not in hypervisor.detections:
                    self.error(
                        detection.span,
                        f"two hypervisors are the default on {detection.arch}",
                        Note("the first default", defaults[detection.arch].span),
                    )
                else:
                    defaults[detection.arch] = detection
        if self.arches and ir.NATIVE not in self.hypervisors and ir.NATIVE not in self.declared_hypervisors:
            span = next(iter(self.arches.values())).span
            self.error(span, "no hypervisor 'native' is declared; every op needs a native implementation")
        for entry in by_kind["typedef"]:
            self._typedef(entry)
        self._check_typedefs()
        self._index_groups(by_kind["group"])
        macros = [m for e in by_kind["macro"] if (m := self._macro(e))]
        self._unique("macro", [(f"{m.name}' on '{m.arch}", m.span) for m in macros])
        macros = list({(m.arch, m.name): m for m in reversed(macros)}.values())
        groups = [g for e in by_kind["group"] if (g := self._group(e))]
        self._check_templates(groups)
        self._check_asm_macro_ops()
        masks = [m for e in by_kind["mask"] if (m := self._mask(e))]
        self._unique("mask for arch", [(m.arch, m.span) for m in masks])
        groups = self._apply_masks(groups, masks)
        groups = self._check_indexes(groups)
        self._check_symbol_signatures(groups)
        yields = [y for e in by_kind["yield"] if (y := self._yield(e))]
        self._unique("yield", [(f"{y.arch}.{y.name}", y.span) for y in yields])
        iommu = self._iommu([e for e in by_kind["iommu"]])
        if self.diagnostics:
            return None
        return ir.Spec(
            files=tuple(tree.path for tree in self.loaded.trees),
            arches=tuple(sorted(self.arches.values(), key=lambda a: a.name)),
            hypervisors=tuple(sorted(self.hypervisors.values(), key=lambda h: h.name)),
            typedefs=tuple(sorted(self.typedefs.values(), key=lambda t: t.name)),
            groups=tuple(sorted(groups, key=self._group_order)),
            macros=tuple(sorted(macros, key=lambda m: (m.arch, m.name))),
            masks=tuple(sorted(masks, key=lambda m: m.arch)),
            yields=tuple(sorted(yields, key=lambda y: (y.arch, y.name))),
            iommu=iommu,
        )

    def _group_order(self, group: ir.Group) -> tuple[str, int, str]:
        template = self.arches[group.arch].template
        position = template.index(group.name) if group.name in template else len(template)
        return (group.arch, position, group.name)

    # -- arch ------------------------------------------------------------------------------

    def _arch(self, entry: Entry) -> None:
        name = self._declared_name(entry, "an architecture")
        self._need_doc(entry, "arch")
        if name is None:
            return
        block = Block(entry, f"arch '{name.text}'", self.diagnostics, ARCH_PROPERTIES, repeatable=("const",))
        pointer = block.integer("pointer_size", "bytes in a pointer")
        model = block.choice("data_model", ("LP64", "ILP32"), "LP64 or ILP32")
        self.declared_arches.add(name.text)
        registers_v = block.names("registers", "every register name clobber lists may use") or []
        registers = [str(v.value) for v in registers_v]
        self._unique(f"register on {name.text}", [(str(v.value), v.span) for v in registers_v])
        spans: dict[str, SourceSpan] = {}

        def regs(prop: str, what: str) -> tuple[str, ...]:
            values = block.names(prop, what) or []
            self._unique("register", [(str(v.value), v.span) for v in values], f"in '{prop}'")
            for value in values:
                spans.setdefault(f"{prop}:{value.value}", value.span)
            return self._registers(name.text, registers, values)

        args = regs("args", "argument registers")
        returns = regs("return", "return registers")
        caller_saved = regs("caller_saved", "registers a call may clobber")
        callee_saved = regs("callee_saved", "registers a call preserves")
        cs_clobbers = regs("callee_save_clobbers", "what a callee_save op may clobber")
        for reg in sorted(set(caller_saved) & set(callee_saved)):
            self.error(
                spans[f"callee_saved:{reg}"],
                f"register '{reg}' is both caller_saved and callee_saved",
                Note("caller_saved here", spans[f"caller_saved:{reg}"]),
            )
        clobber_bits: list[tuple[str, int]] = []
        if (bits_entry := block.get("clobber_bits")) is not None:
            pairs = block.pairs(bits_entry, "int") or []
            for reg, bit in pairs:
                self._registers(name.text, registers, [reg])
                if not 0 <= int(bit.value) < CLOBBER_FIELD_BITS:
                    self.error(
                        bit.span, f"clobber bit {bit.text} does not fit the {CLOBBER_FIELD_BITS}-bit clobber field"
                    )
                    continue
                clobber_bits.append((str(reg.value), int(bit.value)))
            self._unique("register", [(str(r.value), r.span) for r, _ in pairs], "in 'clobber_bits'")
            self._unique("clobber bit", [(str(b.value), b.span) for _, b in pairs])
        site_call = block.string("site_call", "the asm of an unpatched call site")
        site_jump = block.string("site_jump")
        site_size = block.integer("site_size", "bytes of an unpatched call site")
        direct = block.integer("direct_call_size", "bytes of a direct call")
        type_bits = block.integer("site_type_bits", "width of the op index in a site record")
        if type_bits is not None and not 1 <= int(type_bits.value) <= 64:
            self.error(type_bits.span, "site_type_bits must be between 1 and 64")
            type_bits = None
        if pointer is not None and model is not None and int(pointer.value) != MODEL_POINTER_SIZE[str(model.value)]:
            self.error(
                pointer.span, f"data model {model.value} has {MODEL_POINTER_SIZE[str(model.value)]}-byte pointers"
            )
            pointer = None
        if site_size is not None and not 1 <= int(site_size.value) <= 4096:
            self.error(site_size.span, f"'{site_size.text}' is not a plausible size in bytes (1 to 4096)")
            site_size = None
        if direct is not None and not 1 <= int(direct.value) <= 4096:
            self.error(direct.span, f"'{direct.text}' is not a plausible size in bytes (1 to 4096)")
            direct = None
        if site_size is not None and direct is not None and int(site_size.value) < int(direct.value):
            self.error(
                site_size.span, f"a {site_size.text}-byte call site cannot hold the {direct.text}-byte direct call"
            )
        nops = block.strings("nops", "hex of the NOP forms") or []
        for nop in nops:
            if not re.fullmatch(r"([0-9a-fA-F]{2})+", str(nop.value)):
                self.error(nop.span, f"NOP form '{nop.value}' is not a hex byte string")
        assembler = block.string("assembler", "the assembler command")
        identity = block.string("identity")
        isa = block.choice("isa", ISAS, "the instruction set: " + " or ".join(ISAS))
        pad_prefix, pad_limit = self._pad_prefix(block, isa)
        template = block.names("template") or []
        self._unique("group in template", [(str(v.value), v.span) for v in template])
        self.template_spans.update({(name.text, str(v.value)): v.span for v in template})
        constants = self._constants(block)
        if None in (pointer, model, site_call, site_size, direct, type_bits, assembler, isa):
            return
        assert pointer and model and site_call and site_size and direct and type_bits and assembler
        self.arches.setdefault(
            name.text,
            ir.Arch(
                name=name.text,
                doc=_first_line(entry),
                span=name.span,
                pointer_size=int(pointer.value),
                data_model=str(model.value),
                registers=tuple(registers),
                args=args,
                returns=returns,
                caller_saved=caller_saved,
                callee_saved=callee_saved,
                callee_save_clobbers=cs_clobbers,
                clobber_bits=tuple(clobber_bits),
                site_call=str(site_call.value),
                site_jump=str(site_jump.value) if site_jump else None,
                site_size=int(site_size.value),
                direct_call_size=int(direct.value),
                site_type_bits=int(type_bits.value),
                nops=tuple(str(n.value).lower() for n in nops),
                pad_prefix=pad_prefix,
                pad_prefix_limit=pad_limit,
                assembler=str(assembler.value),
                identity=str(identity.value) if identity else None,
                isa=str(isa.value),
                template=tuple(str(v.value) for v in template),
                constants=constants,
            ),
        )

    def _pad_prefix(self, block: Block, isa: Value | None) -> tuple[str | None, int]:
        """The redundant prefix byte a patcher may pad a site's instructions with, and how many per instruction."""
        prefix = block.string("pad_prefix")
        limit = block.integer("pad_prefix_limit")
        text = str(prefix.value).lower() if prefix is not None else None
        if prefix is not None and not re.fullmatch(r"[0-9a-f]{2}", text or ""):
            self.error(prefix.span, f"pad_prefix '{prefix.value}' is not one byte in hex")
            text = None
        if prefix is not None and isa is not None and str(isa.value) != "x86_64":
            self.error(prefix.span, f"pad_prefix needs variable-length instructions; isa {isa.value} has none")
            text = None
        count = int(limit.value) if limit is not None else 0
        if limit is not None and not 0 <= count <= ir.X86_MAX_INSTRUCTION - 1:
            self.error(limit.span, f"pad_prefix_limit {limit.text} is not between 0 and {ir.X86_MAX_INSTRUCTION - 1}")
            count = 0
        if limit is not None and prefix is None:
            self.error(limit.span, "pad_prefix_limit without a pad_prefix to pad with")
        return text, count if text is not None else 0

    def _constants(self, block: Block) -> tuple[ir.Constant, ...]:
        constants = []
        for entry in block.all("const"):
            for const_name, value in block.pairs(entry, "int") or []:
                constants.append(ir.Constant(str(const_name.value), int(value.value), const_name.span))
        self._unique(f"constant in {block.what}", [(c.name, c.span) for c in constants])
        return tuple(sorted(constants, key=lambda c: c.name))

    # -- hypervisor ------------------------------------------------------------------------

    def _hypervisor(self, entry: Entry) -> None:
        name = self._declared_name(entry, "a hypervisor")
        self._need_doc(entry, "hypervisor")
        if name is None:
            return
        block = Block(
            entry,
            f"hypervisor '{name.text}'",
            self.diagnostics,
            HYPERVISOR_PROPERTIES,
            repeatable=("detect", "native_fallback", "const"),
        )
        self.declared_hypervisors.add(name.text)
        if name.text in RESERVED_WORDS:
            self.error(name.span, f"'{name.text}' is a property word; a hypervisor needs another name")
        listed = block.names("arches", "the architectures it runs on") or []
        self._unique("arch", [(str(v.value), v.span) for v in listed], f"in hypervisor '{name.text}'")
        arches = [v for v in listed if self._known(v, self.arches, "arch")]
        arch_names = [str(v.value) for v in arches]
        detections: list[ir.Detection] = []
        for detect in block.all("detect"):
            found = self._detection(detect, arch_names)
            if found:
                detections.append(found)
        for arch in arch_names:
            if not any(d.arch == arch for d in detections):
                self.error(name.span, f"hypervisor '{name.text}' has no 'detect' for arch '{arch}'")
        keys = [
            (
                f"{d.arch} {d.method} " + " ".join(str(x) for x in (d.leaf, d.signature, d.symbol) if x is not None),
                d.span,
            )
            for d in detections
        ]
        self._unique("detection", [(key.strip(), span) for key, span in keys], f"in hypervisor '{name.text}'")
        execution = block.choice("execution", EXECUTIONS, "bare, hvm or pv")
        enabled = block.choice("paravirt_enabled", ("true", "false"), "true or false")
        fallback: list[tuple[str, str]] = []
        for prop in block.all("native_fallback"):
            fallback += self._fallback(prop, arch_names)
        if name.text == ir.NATIVE and execution is not None and execution.value != "bare":
            self.error(execution.span, "hypervisor 'native' must have 'execution bare'")
        if name.text == ir.NATIVE and enabled is not None and enabled.value != "false":
            self.error(enabled.span, "on bare hardware paravirt_enabled() is false")
        if execution is None or enabled is None:
            return
        self.hypervisors.setdefault(
            name.text,
            ir.Hypervisor(
                name=name.text,
                doc=_first_line(entry),
                span=name.span,
                arches=tuple(sorted(arch_names)),
                detections=tuple(detections),
                execution=str(execution.value),
                paravirt_enabled=enabled.value == "true",
                native_fallback=tuple(sorted(fallback)),
                constants=self._constants(block),
            ),
        )

    def _detection(self, entry: Entry, arches: list[str]) -> ir.Detection | None:
        values = entry.values
        usage = (
            "'detect' takes ARCH cpuid LEAF \"SIGNATURE\", ARCH boot_entry SYMBOL [hypervisor_type N], or ARCH default"
        )
        if entry.params is not None or len(entry.groups) != 1 or len(values) < 2:
            self.error(entry.span, usage)
            return None
        arch, method, rest = values[0], values[1], values[2:]
        if not self._known(arch, arches, "arch of this hypervisor") or not self._known(
            method, DETECT_METHODS, "detection method"
        ):
            return None
        kinds = [v.kind for v in rest]
        span = entry.span
        if method.value == "cpuid" and kinds == ["int", "string"]:
            signature = str(rest[1].value)
            if not signature.isascii() or len(signature) > 12:
                self.error(rest[1].span, "a CPUID signature is at most 12 ASCII characters (EBX, ECX, EDX)")
            if not 0 <= int(rest[0].value) <= 0xFFFFFFFF:
                self.error(rest[0].span, f"CPUID leaf {rest[0].text} is not a 32-bit value")
            return ir.Detection(str(arch.value), "cpuid", int(rest[0].value), signature, None, None, span)
        if method.value == "boot_entry" and kinds in (["name"], ["name", "name", "int"]):
            if len(rest) == 3 and rest[1].value != "hypervisor_type":
                self.error(rest[1].span, f"unknown detect option '{rest[1].text}'; expected one of: hypervisor_type")
                return None
            htype = int(rest[2].value) if len(rest) == 3 else None
            return ir.Detection(str(arch.value), "boot_entry", None, None, str(rest[0].value), htype, span)
        if method.value == "default" and not rest:
            return ir.Detection(str(arch.value), "default", None, None, None, None, span)
        self.error(entry.span, usage)
        return None

    def _fallback(self, entry: Entry, arches: list[str]) -> list[tuple[str, str]]:
        groups = entry.groups
        usage = "'native_fallback' takes ARCH GROUP, GROUP, ..."
        if entry.params is not None or not groups or len(groups[0]) != 2 or any(len(g) != 1 for g in groups[1:]):
            self.error(entry.span, usage)
            return []
        if any(v.kind != "name" for g in groups for v in g):
            self.error(entry.span, usage)
            return []
        arch = groups[0][0]
        if not self._known(arch, arches, "arch of this hypervisor"):
            return []
        self._pending_fallbacks.append((str(arch.value), [groups[0][1], *(g[0] for g in groups[1:])]))
        return [(str(arch.value), str(v.value)) for v in [groups[0][1], *(g[0] for g in groups[1:])]]

    # -- typedefs --------------------------------------------------------------------------

    def _typedef(self, entry: Entry) -> None:
        self._need_doc(entry, "typedef")
        values = entry.values
        if entry.is_block or entry.params is not None or len(entry.groups) != 1 or len(values) < 2:
            self.error(entry.span, "'typedef' takes a type and a name: 'typedef unsigned long pteval_t;'")
            return
        name = values[-1]
        if name.kind != "name" or any(v.kind not in ("name", "star") for v in values):
            self.error(entry.span, "'typedef' takes a type and a name: 'typedef unsigned long pteval_t;'")
            return
        if name.text in ctype.BUILTIN_NAMES or ctype.is_c_word(name.text):
            self.error(name.span, f"typedef cannot redefine the built-in type '{name.text}'")
            return
        if name.value in self.typedefs:
            self.error(
                name.span, f"duplicate typedef '{name.text}'", Note("first defined here", self.typedefs[name.text].span)
            )
            return
        words = [v.text for v in values[:-1]]
        self.typedefs[name.text] = ir.Typedef(name.text, " ".join(words), _first_line(entry), name.span)
        self.typedef_words[name.text] = words

    def _check_typedefs(self) -> None:
        for typedef in self.typedefs.values():
            resolved = ctype.resolve(self.typedef_words[typedef.name], "LP64", self.typedef_words)
            if isinstance(resolved, str) and "passed by value" not in resolved:  # a struct typedef is fine
                self.error(typedef.span, f"typedef '{typedef.name}': {resolved}")

    # -- groups and ops --------------------------------------------------------------------

    def _index_groups(self, entries: list[Entry]) -> None:
        """Records every group's arch and name first, so macros can name ops of any group."""
        seen: list[tuple[str, SourceSpan]] = []
        for entry in entries:
            name = _name(entry)
            arch = _property_name(entry, "arch")
            if name is None or arch is None or arch not in self.arches:
                continue
            seen.append((f"{name.value}' on '{arch}", name.span))
            if (arch, str(name.value)) not in self.group_entries:
                self.group_entries[(arch, str(name.value))] = entry
                self.group_names.setdefault(arch, []).append(str(name.value))
        self._unique("group", seen)

    def _group(self, entry: Entry) -> ir.Group | None:
        name = self._declared_name(entry, "a group of ops")
        self._need_doc(entry, "group")
        if name is None:
            return None
        block = Block(
            entry, f"group '{name.text}'", self.diagnostics, ("arch", "struct", "override"), members=("op", "data")
        )
        arch = self._arch_of(block)
        struct = block.name("struct", "the C struct name")
        override = block.choice("override", ("required",))
        if arch is None or struct is None:
            return None
        if self.group_entries.get((arch.name, name.text)) is not entry:
            return None  # a duplicate, already reported
        ops: list[ir.Op] = []
        data: list[ir.DataField] = []
        for member in block.members:
            if member.keyword == "op":
                op = self._op(member, arch, name.text, override is not None)
                if op:
                    ops.append(op)
            else:
                field = self._data(member, arch, name.text, override is not None)
                if field:
                    data.append(field)
        self._unique("member", [(m.name, m.span) for m in [*ops, *data]], f"in group '{name.text}'")
        return ir.Group(
            name=name.text,
            arch=arch.name,
            doc=_first_line(entry),
            span=name.span,
            struct=str(struct.value),
            override_required=override is not None,
            ops=tuple(ops),
            data=tuple(data),
            mask_bit=None,
        )

    def _c_declaration(self, entry: Entry, what: str) -> tuple[list[Value], Value] | None:
        """`RET NAME` from an op or data header."""
        values = entry.values
        if len(entry.groups) != 1 or len(values) < 2 or values[-1].kind != "name":
            self.error(entry.keyword_span, f"'{entry.keyword}' needs a C declaration: {what}")
            return None
        if any(v.kind not in ("name", "star") for v in values):
            bad = next(v for v in values if v.kind not in ("name", "star"))
            self.error(bad.span, f"unexpected {bad.kind} '{bad.text}' in a C declaration")
            return None
        return list(values[:-1]), values[-1]

    def _resolve(self, words: Sequence[Value], arch: ir.Arch) -> ir.CType | None:
        resolved = ctype.resolve([w.text for w in words], arch.data_model, self.typedef_words)
        if isinstance(resolved, str):
            self.error(words[0].span.to(words[-1].span), resolved)
            return None
        return resolved

    def _params(self, params: Sequence[Param], arch: ir.Arch) -> list[ir.Param] | None:
        if len(params) == 1 and [w.text for w in params[0].words] == ["void"] and not params[0].annotation:
            return []
        out: list[ir.Param] = []
        ok = True
        for param in params:
            words = list(param.words)
            if param.annotation or any(w.kind not in ("name", "star") for w in words):
                self.error(param.span, "a parameter is a C declaration: 'unsigned long addr'")
                ok = False
                continue
            if len(words) < 2 or words[-1].kind != "name" or ctype.is_c_word(words[-1].text):
                self.error(param.span, "parameter needs a type and a name, as in 'unsigned long addr'")
                ok = False
                continue
            resolved = self._resolve(words[:-1], arch)
            if resolved is None:
                ok = False
                continue
            if resolved.kind == "void":
                self.error(param.span, "a parameter cannot have type 'void'")
                ok = False
                continue
            if resolved.size > arch.pointer_size:
                self.error(
                    param.span,
                    f"parameter '{words[-1].text}' of type '{resolved.text}' ({resolved.size} bytes) does not fit "
                    f"a {arch.pointer_size}-byte register on {arch.name}",
                )
                ok = False
            out.append(ir.Param(words[-1].text, resolved, words[-1].span))
        self._unique("parameter", [(p.name, p.span) for p in out])
        return out if ok else None

    def _op(self, entry: Entry, arch: ir.Arch, group: str, group_override: bool) -> ir.Op | None:
        self._need_doc(entry, "op")
        if not entry.is_block or entry.params is None:
            self.error(entry.keyword_span, "an op is 'op RET NAME(PARAMS) { ... }'")
            return None
        declaration = self._c_declaration(entry, "'op RET NAME(PARAMS) { ... }'")
        if declaration is None:
            return None
        ret_words, name = declaration
        if not self._plain_name(name, "an op"):
            return None
        hypervisors = sorted(self.declared_hypervisors)
        block = Block(
            entry,
            f"op '{group}.{name.text}'",
            self.diagnostics,
            OP_PROPERTIES,
            repeatable=("effect",),
            members=("variant",),
            dynamic=hypervisors,
        )
        returns = self._resolve(ret_words, arch)
        params = self._params(entry.params, arch)
        if params is not None and len(params) > len(arch.args):
            self.error(
                name.span,
                f"op '{name.text}' takes {len(params)} arguments but {arch.name} passes at most "
                f"{len(arch.args)} in registers ({', '.join(arch.args)})",
            )
        if returns is not None and returns.size > arch.pointer_size * max(1, len(arch.returns)):
            self.error(
                ret_words[0].span, f"return type '{returns.text}' does not fit the return registers of {arch.name}"
            )
        category = block.choice("category", ir.CATEGORIES, ", ".join(ir.CATEGORIES))
        transfer = block.choice("transfer", ("call", "jump"))
        callee_save = block.flag("callee_save")
        override = block.choice("override", ("required",)) is not None or group_override
        clobbers = self._op_clobbers(block, arch, callee_save)
        patch_type = block.integer("patch_type")
        if category is None or returns is None or params is None:
            return None
        clobbers_entry = block.get("clobbers")
        if returns.kind != "void" and clobbers_entry is not None:
            kept = [r for r in arch.returns[: max(1, -(-returns.size // arch.pointer_size))] if r not in clobbers]
            if kept:
                self.error(
                    clobbers_entry.span,
                    f"op '{name.text}' returns a value in {', '.join(kept)}, so its clobbers must include "
                    f"{', '.join(kept)}",
                )
        category_name = str(category.value)
        if category_name == ir.INDIRECT and callee_save:
            self.error(
                block.get("callee_save").keyword_span, "callee_save applies to patchable sites, not to indirect ops"
            )  # type: ignore[union-attr]
        if transfer is not None and transfer.value == "jump":
            if arch.site_jump is None:
                self.error(transfer.span, f"arch {arch.name} declares no 'site_jump' for jump-type ops")
            if category_name == ir.INDIRECT:
                self.error(transfer.span, "a jump-type op must be patchable or asm_macro")
            if returns.kind != "void":
                self.error(transfer.span, "a jump-type op never returns, so its return type must be void")
        qual = (arch.name, f"{group}.{name.text}")
        if category_name == ir.ASM_MACRO:
            self.asm_macro_ops[qual] = category.span
        if patch_type is not None and arch.template:
            self.error(patch_type.span, f"{arch.name} numbers ops by their slot in its template; remove 'patch_type'")
        if patch_type is None and not arch.template and category_name != ir.INDIRECT:
            self.error(name.span, f"patchable op '{name.text}' on {arch.name} needs a 'patch_type'")
        context = _OpContext(
            arch, f"op '{group}.{name.text}'", category_name, returns, params, override, callee_save, clobbers
        )
        impls = self._impls(block.dynamic, context, name.span)
        variants = [v for m in block.members if (v := self._variant(m, context, patch_type))]
        self._unique(f"variant of op '{name.text}'", [(v.name, v.span) for v in variants])
        if impls is None:
            return None
        effects = self._effects(block, arch)
        index = int(patch_type.value) if patch_type is not None else -1
        return ir.Op(
            name=name.text,
            group=group,
            arch=arch.name,
            doc=_first_line(entry),
            span=name.span,
            returns=returns,
            params=tuple(params),
            category=category_name,
            transfer=str(transfer.value) if transfer else "call",
            callee_save=callee_save,
            clobbers=clobbers,
            index=index,
            impls=impls,
            variants=tuple(variants),
            effects=effects,
        )

    def _effects(self, block: Block, arch: ir.Arch) -> tuple[ir.Effect, ...]:
        """`effect HYPERVISOR "EXPR";` lines: what the op must do, checked by the generated tests."""
        found = []
        supported = self._hypervisors_of(arch.name)
        for entry in block.all("effect"):
            values = entry.values
            if entry.params is not None or [v.kind for v in values] != ["name", "string"]:
                self.error(entry.span, "an effect is 'effect HYPERVISOR \"EXPRESSION\";'")
                continue
            hypervisor, text = values
            if not self._known(hypervisor, [*supported, "all"], "hypervisor", f"on {arch.name}"):
                continue
            problem = check_effect(arch.isa, str(text.value))
            if problem is not None:
                self.error(text.span, problem)
                continue
            names = supported if hypervisor.value == "all" else [str(hypervisor.value)]
            found += [ir.Effect(name, str(text.value), entry.span) for name in names]
        return tuple(sorted(found, key=lambda e: (e.hypervisor, e.span)))

    def _op_clobbers(self, block: Block, arch: ir.Arch, callee_save: bool) -> tuple[str, ...]:
        entry = block.get("clobbers")
        if entry is None:
            return arch.callee_save_clobbers if callee_save else arch.caller_saved
        values = names_of(entry, self.diagnostics) or []
        words = [str(v.value) for v in values]
        if words == ["all"]:
            chosen: tuple[str, ...] = arch.caller_saved
        elif words == ["none"]:
            chosen = ()
        else:
            chosen = self._registers(arch.name, arch.registers, values)
            self._unique("clobber", [(str(v.value), v.span) for v in values])
        if callee_save:
            extra = [r for r in chosen if r not in arch.callee_save_clobbers]
            if extra:
                self.error(
                    entry.span,
                    f"a callee_save op may clobber only {', '.join(arch.callee_save_clobbers) or 'nothing'} on "
                    f"{arch.name}; not {', '.join(extra)}",
                )
        for reg in chosen:
            if reg in arch.callee_saved:
                self.error(entry.span, f"register '{reg}' is callee_saved on {arch.name}; no call site may clobber it")
        order = {r: i for i, r in enumerate(arch.registers)}
        return tuple(sorted(set(chosen), key=lambda r: order.get(r, 0)))

    def _impl_line(self, entry: Entry, context: _OpContext) -> tuple[str, str | None] | None:
        """(kind, text) of `xen call xen_irq_disable;` and the like."""
        values = entry.values
        usage = (
            "an implementation is 'asm \"TEXT\" [out_of_line]', 'call SYMBOL [callee_save]', 'nop', 'identity' "
            "or 'native'"
        )
        if entry.params is not None or len(entry.groups) != 1:
            self.error(entry.span, usage)
            return None
        kind = values[0]
        if kind.kind != "name" or not self._known(kind, ir.IMPL_KINDS, "implementation"):
            return None
        rest = values[1:]
        if kind.value == ir.IMPL_ASM and [v.kind for v in rest] in (["string"], ["string", "name"]):
            text = str(rest[0].value)
            if not text.strip():
                self.error(rest[0].span, "an asm template cannot be empty; use 'nop'")
                return None
            if len(rest) == 2:
                if rest[1].value != "out_of_line":
                    self.error(rest[1].span, f"unknown asm option '{rest[1].text}'; expected one of: out_of_line")
                    return None
                return IMPL_ASM_OUT_OF_LINE, text
            return ir.IMPL_ASM, text
        if kind.value == ir.IMPL_CALL and [v.kind for v in rest] == ["name"]:
            return ir.IMPL_CALL, str(rest[0].value)
        if kind.value == ir.IMPL_CALL and [v.kind for v in rest] == ["name", "name"]:
            if rest[1].value != "callee_save":
                self.error(rest[1].span, f"unknown call option '{rest[1].text}'; expected one of: callee_save")
                return None
            if not context.callee_save:
                self.error(
                    rest[1].span,
                    f"'callee_save' on a call only matters for callee_save ops, and {context.what} is not one",
                )
                return None
            return IMPL_CALL_PRESERVING, str(rest[0].value)
        if kind.value in (ir.IMPL_NOP, ir.IMPL_IDENTITY, ir.IMPL_NATIVE) and not rest:
            return str(kind.value), None
        self.error(entry.span, usage)
        return None

    def _impls(self, lines: list[Entry], context: _OpContext, name_span: SourceSpan) -> tuple[ir.Impl, ...] | None:
        arch = context.arch
        supported = self._hypervisors_of(arch.name)
        declared: dict[str, tuple[Entry, tuple[str, str | None]]] = {}
        ok = True
        for line in lines:
            hypervisor = line.keyword
            if hypervisor not in self.hypervisors:
                ok = False  # its declaration is in error, reported there
                continue
            if hypervisor not in supported:
                runs_on = ", ".join(self.hypervisors[hypervisor].arches)
                self.error(
                    line.keyword_span, f"hypervisor '{hypervisor}' does not run on {arch.name} (it runs on: {runs_on})"
                )
                ok = False
                continue
            if hypervisor in declared:
                self.error(
                    line.keyword_span,
                    f"duplicate implementation for '{hypervisor}' in {context.what}",
                    Note("first given here", declared[hypervisor][0].keyword_span),
                )
                continue
            parsed = self._impl_line(line, context)
            if parsed is None:
                ok = False
                continue
            declared[hypervisor] = (line, parsed)
            if not self._impl_fits(line, parsed, context):
                ok = False
        native = declared.get(ir.NATIVE)
        if native is None:
            if not any(line.keyword == ir.NATIVE for line in lines):  # else already reported
                self.error(name_span, f"{context.what} has no native implementation on {arch.name}")
            return None
        if native[1][0] == ir.IMPL_NATIVE:
            self.error(native[0].keyword_span, "'native native' says nothing; give the native implementation")
            return None
        impls: list[ir.Impl] = []
        native_kind, native_text = native[1]
        for hypervisor in supported:
            if hypervisor in declared:
                line, (kind, text) = declared[hypervisor]
                if kind == ir.IMPL_NATIVE:
                    impls.append(_impl(hypervisor, native_kind, native_text, native[0].span, "native"))
                else:
                    impls.append(_impl(hypervisor, kind, text, line.span, "declared"))
                continue
            if context.override and hypervisor != ir.NATIVE:
                self.error(
                    name_span,
                    f"hypervisor '{hypervisor}' does not implement {context.what}, which requires an override; "
                    f"add '{hypervisor} native;' to keep the native implementation",
                )
                ok = False
                continue
            impls.append(_impl(hypervisor, native_kind, native_text, native[0].span, "fallback"))
        return tuple(impls) if ok else None

    def _impl_fits(self, line: Entry, parsed: tuple[str, str | None], context: _OpContext) -> bool:
        kind = ir.IMPL_ASM if parsed[0] == IMPL_ASM_OUT_OF_LINE else parsed[0]
        if context.category == ir.INDIRECT and kind in (ir.IMPL_ASM, ir.IMPL_IDENTITY):
            self.error(
                line.span,
                f"{context.what} is an indirect call and is never patched, so it cannot be '{kind}'; "
                "use 'call SYMBOL' or 'nop', or make it patchable",
            )
            return False
        if kind == ir.IMPL_IDENTITY and (context.returns.kind == "void" or not context.params):
            self.error(line.span, f"'identity' returns the first argument, but {context.what} has none to return")
            return False
        if kind == ir.IMPL_IDENTITY and context.returns.size != context.params[0].ctype.size:
            self.error(
                line.span,
                f"'identity' returns the first argument, but {context.what} takes {context.params[0].ctype.size} "
                f"bytes and returns {context.returns.size}",
            )
            return False
        if kind == ir.IMPL_NOP and context.returns.kind != "void" and context.category != ir.INDIRECT:
            self.error(
                line.span,
                f"'nop' leaves the return register unset, but {context.what} returns '{context.returns.text}'",
            )
            return False
        return True

    def _variant(self, entry: Entry, context: _OpContext, base: Value | None) -> ir.Variant | None:
        self._need_doc(entry, "variant")
        values = entry.values
        if entry.params is not None or [v.kind for v in values] != ["name", "int"]:
            self.error(entry.keyword_span, "a variant is 'variant NAME ID { HYPERVISOR IMPL; ... }'")
            return None
        if base is None:
            self.error(entry.keyword_span, "variants need the op's 'patch_type' to number them")
            return None
        hypervisors = sorted(self.declared_hypervisors)
        block = Block(entry, f"variant '{values[0].text}'", self.diagnostics, ("clobbers",), dynamic=hypervisors)
        sub = attrs.evolve(context, what=f"variant '{values[0].text}' of {context.what}", override=False)
        impls = self._impls(block.dynamic, sub, values[0].span)
        # A variant may write the register it stands for (setreg GP writes gp): that is its effect.
        extra = block.names("clobbers") or []
        self._registers(context.arch.name, context.arch.registers, extra)
        if impls is None:
            return None
        reg_id = int(values[1].value)
        order = {r: i for i, r in enumerate(context.arch.registers)}
        clobbers = tuple(sorted({*context.clobbers, *(str(v.value) for v in extra)}, key=lambda r: order.get(r, 0)))
        return ir.Variant(
            str(values[0].value), reg_id, int(base.value) + reg_id, _first_line(entry), values[0].span, impls, clobbers
        )

    def _data(self, entry: Entry, arch: ir.Arch, group: str, override: bool) -> ir.DataField | None:
        self._need_doc(entry, "data")
        declaration = self._c_declaration(entry, "'data TYPE NAME { HYPERVISOR VALUE; ... }'")
        if declaration is None or not entry.is_block or entry.params is not None:
            if declaration is not None:
                self.error(entry.keyword_span, "a data field is 'data TYPE NAME { HYPERVISOR VALUE; ... }'")
            return None
        words, name = declaration
        field_type = self._resolve(words, arch)
        if field_type is not None and field_type.kind == "void":
            self.error(words[0].span, f"data '{name.text}' cannot have type 'void'")
            field_type = None
        block = Block(
            entry, f"data '{group}.{name.text}'", self.diagnostics, (), dynamic=sorted(self.declared_hypervisors)
        )
        supported = self._hypervisors_of(arch.name)
        given: dict[str, tuple[Entry, int | str | bool]] = {}
        rejected: set[str] = set()
        for line in block.dynamic:
            rejected.add(line.keyword)
            values = line.values
            if line.keyword not in self.hypervisors:
                continue  # its declaration is in error, reported there
            if line.keyword not in supported:
                self.error(line.keyword_span, f"hypervisor '{line.keyword}' does not run on {arch.name}")
                continue
            if line.keyword in given:
                self.error(
                    line.keyword_span,
                    f"duplicate value for '{line.keyword}'",
                    Note("first given here", given[line.keyword][0].keyword_span),
                )
                continue
            if len(values) != 1 or line.params is not None or values[0].kind == "star":
                self.error(line.span, "a data value is one integer, string, 'true' or 'false'")
                continue
            value: int | str | bool = values[0].value
            if values[0].kind == "name":
                if value not in ("true", "false"):
                    self.error(
                        values[0].span, f"unknown value '{value}'; expected one of: false, true, an integer, a string"
                    )
                    continue
                value = value == "true"
            if field_type is not None:
                wants_string = field_type.kind == "pointer"
                if wants_string != (values[0].kind == "string"):
                    self.error(
                        values[0].span, f"data '{name.text}' has type '{field_type.text}'; this value does not fit it"
                    )
                    continue
            if field_type is not None and field_type.kind == "integer" and values[0].kind == "int":
                bits = 8 * field_type.size
                if not -(1 << (bits - 1)) <= int(value) < (1 << bits):
                    size = f"{field_type.size} byte{'s' if field_type.size != 1 else ''}"
                    self.error(values[0].span, f"value {values[0].text} does not fit '{field_type.text}' ({size})")
                    continue
            given[line.keyword] = (line, value)
        if ir.NATIVE not in given:
            if ir.NATIVE not in rejected:
                self.error(name.span, f"data '{group}.{name.text}' has no native value")
            return None
        values_out = []
        for hypervisor in supported:
            if hypervisor in given:
                values_out.append(ir.DataValue(hypervisor, given[hypervisor][1], given[hypervisor][0].span, "declared"))
            elif override and hypervisor != ir.NATIVE:
                self.error(name.span, f"hypervisor '{hypervisor}' gives no value for data '{group}.{name.text}'")
            else:
                native = given[ir.NATIVE]
                values_out.append(ir.DataValue(hypervisor, native[1], native[0].span, "fallback"))
        if field_type is None:
            return None
        return ir.DataField(name.text, _first_line(entry), name.span, field_type, tuple(values_out))

    def _check_templates(self, groups: list[ir.Group]) -> None:
        declared = {(g.arch, g.name) for g in groups}
        for arch in self.arches.values():
            if not self.group_names.get(arch.name):
                continue  # no group of that arch is part of this run
            for name in arch.template:
                if (arch.name, name) not in declared and (arch.name, name) not in self.group_entries:
                    allowed = sorted(n for a, n in self.group_entries if a == arch.name)
                    self.error(
                        self.template_spans.get((arch.name, name), arch.span),
                        f"template of {arch.name} names unknown group '{name}'; {expected_one_of(allowed)}",
                    )
        for group in groups:
            template = self.arches[group.arch].template
            if template and group.ops and group.name not in template:
                self.error(group.span, f"group '{group.name}' has ops but is not in the template of {group.arch}")

    def _check_symbol_signatures(self, groups: list[ir.Group]) -> None:
        """A function called by several ops must have one C signature: it gets one prototype."""
        first: dict[tuple[str, str], ir.Op] = {}
        for group in groups:
            for op in group.ops:
                signature = (op.returns.text, tuple(p.ctype.text for p in op.params))
                for impl in [*op.impls, *(i for v in op.variants for i in v.impls)]:
                    if impl.kind != ir.IMPL_CALL or impl.source != "declared" or impl.text is None:
                        continue
                    key = (op.arch, impl.text)
                    other = first.setdefault(key, op)
                    if other is op:
                        continue
                    theirs = (other.returns.text, tuple(p.ctype.text for p in other.params))
                    if theirs != signature:
                        self.error(
                            impl.span,
                            f"'{impl.text}' implements ops with different signatures: '{op.qualname}' here and "
                            f"'{other.qualname}'",
                            Note(f"'{other.qualname}' is declared here", other.span),
                        )

    def _check_asm_macro_ops(self) -> None:
        for key, span in sorted(self.asm_macro_ops.items(), key=lambda kv: kv[1]):
            if key not in self.via_targets:
                self.error(span, f"op '{key[1]}' is in category asm_macro but no macro reaches it through 'via'")

    def _check_indexes(self, groups: list[ir.Group]) -> list[ir.Group]:
        """Assigns template slots (x86) and checks that every index fits the site record."""
        for arch in self.arches.values():
            limit = 1 << arch.site_type_bits
            mine = sorted((g for g in groups if g.arch == arch.name), key=self._group_order)
            if arch.template:
                slot = 0
                for group in mine:
                    if group.name not in arch.template:
                        continue
                    new_ops = []
                    for op in group.ops:
                        if slot >= limit:
                            self.error(
                                op.span,
                                f"op '{op.qualname}' gets index {slot}, which does not fit the "
                                f"{arch.site_type_bits}-bit type field of a site record on {arch.name}",
                            )
                        new_ops.append(_with_index(op, slot))
                        slot += 1
                    groups[groups.index(group)] = _with_ops(group, tuple(new_ops))
            else:
                seen: dict[int, tuple[str, SourceSpan]] = {}
                for group in mine:
                    for op in group.ops:
                        entries = [(op.index, op.qualname, op.span)] if op.index >= 0 else []
                        entries += [(v.patch_type, f"{op.qualname}[{v.name}]", v.span) for v in op.variants]
                        for index, what, span in entries:
                            if not 0 <= index < limit:
                                self.error(
                                    span,
                                    f"patch type {index:#x} of '{what}' does not fit the "
                                    f"{arch.site_type_bits}-bit type field on {arch.name}",
                                )
                            if index in seen:
                                self.error(
                                    span,
                                    f"'{what}' reuses patch type {index:#x}",
                                    Note(f"'{seen[index][0]}' has it", seen[index][1]),
                                )
                            else:
                                seen[index] = (what, span)
        return groups

    # -- macros ----------------------------------------------------------------------------

    def _macro(self, entry: Entry) -> ir.Macro | None:
        self._need_doc(entry, "macro")
        values = entry.values
        if not entry.is_block or len(values) != 1 or values[0].kind != "name":
            self.error(entry.keyword_span, "a macro is 'macro NAME(PARAMS) { ... }'")
            return None
        name = values[0]
        block = Block(
            entry,
            f"macro '{name.text}'",
            self.diagnostics,
            ("arch", "via", "override"),
            dynamic=sorted(self.declared_hypervisors),
        )
        arch = self._arch_of(block)
        override = block.choice("override", ("required",)) is not None
        params = self._macro_params(entry.params or ())
        via = block.name("via")
        if arch is None:
            return None
        via_name = None
        if via is not None:
            via_name = str(via.value)
            allowed = [f"{g}.{op}" for (a, g), e in self.group_entries.items() if a == arch.name for op in _op_names(e)]
            if self._known(via, allowed, "op", f"on {arch.name}"):
                self.via_targets.add((arch.name, via_name))
        supported = self._hypervisors_of(arch.name)
        declared: dict[str, tuple[Entry, str | None]] = {}
        param_names = {str(p.words[0].value) for p in entry.params or () if p.words}
        for line in block.dynamic:
            if line.keyword not in self.hypervisors:
                continue  # its declaration is in error, reported there
            if line.keyword not in supported:
                self.error(line.keyword_span, f"hypervisor '{line.keyword}' does not run on {arch.name}")
                continue
            if line.keyword in declared:
                self.error(
                    line.keyword_span,
                    f"duplicate expansion for '{line.keyword}'",
                    Note("first given here", declared[line.keyword][0].keyword_span),
                )
                continue
            kinds = [v.kind for v in line.values]
            words = [v.value for v in line.values]
            if (
                line.params is not None
                or kinds not in (["name", "string"], ["name"])
                or (words[0] not in ("asm", "native", "nop") or (len(words) == 2) != (words[0] == "asm"))
            ):
                self.error(line.span, "a macro expansion is 'asm \"TEXT\"', 'nop' (expands to nothing) or 'native'")
                continue
            if words[0] == "asm" and not str(words[1]).strip():
                self.error(line.values[1].span, "an empty expansion is written 'nop'")
                continue
            text = str(words[1]) if words[0] == "asm" else ("" if words[0] == "nop" else None)
            if text is not None:
                for match in _PARAM_REFERENCE.finditer(text):
                    if match.group(1) not in param_names:
                        allowed_params = sorted(param_names)
                        self.error(
                            line.values[1].span,
                            f"macro '{name.text}' has no parameter '{match.group(1)}'; "
                            f"{expected_one_of(allowed_params)}",
                        )
            declared[line.keyword] = (line, text)
        native = declared.get(ir.NATIVE)
        if native is None or native[1] is None:
            self.error(name.span, f"macro '{name.text}' has no native expansion")
            return None
        expansions = []
        for hypervisor in supported:
            if hypervisor in declared and declared[hypervisor][1] is not None:
                line, text = declared[hypervisor]
                expansions.append(ir.Expansion(hypervisor, str(text), line.span, "declared"))
            elif hypervisor in declared:
                expansions.append(ir.Expansion(hypervisor, native[1], native[0].span, "native"))
            elif override and hypervisor != ir.NATIVE:
                self.error(
                    name.span,
                    f"hypervisor '{hypervisor}' gives no expansion of macro '{name.text}', which requires an override",
                )
            else:
                expansions.append(ir.Expansion(hypervisor, native[1], native[0].span, "fallback"))
        return ir.Macro(name.text, arch.name, _first_line(entry), name.span, tuple(params), via_name, tuple(expansions))

    def _macro_params(self, params: Sequence[Param]) -> list[ir.MacroParam]:
        out = []
        for param in params:
            words, annotation = param.words, param.annotation
            if (
                len(words) != 1
                or words[0].kind != "name"
                or not 1 <= len(annotation) <= 2
                or any(v.kind != "name" for v in annotation)
            ):
                self.error(param.span, "a macro parameter is 'name: KIND [ROLE]', as in 'reg: gr out'")
                continue
            kind = annotation[0]
            role = annotation[1] if len(annotation) == 2 else None
            if not self._known(kind, MACRO_KINDS, "parameter kind"):
                continue
            if role is not None and not self._known(role, MACRO_ROLES, "parameter role"):
                continue
            out.append(
                ir.MacroParam(str(words[0].value), str(kind.value), str(role.value) if role else "in", words[0].span)
            )
        self._unique("parameter", [(p.name, p.span) for p in out])
        return out

    # -- mask, yield, iommu ----------------------------------------------------------------

    def _mask(self, entry: Entry) -> ir.Mask | None:
        name = self._declared_name(entry, "a forced-native mask")
        self._need_doc(entry, "mask")
        if name is None:
            return None
        block = Block(entry, f"mask '{name.text}'", self.diagnostics, ("arch", "cmdline", "bits"))
        arch = self._arch_of(block)
        cmdline = block.string("cmdline", "the kernel parameter")
        bits_entry = block.require("bits", "the bit each group owns")
        if arch is None or cmdline is None or bits_entry is None:
            return None
        pairs = block.pairs(bits_entry, "int") or []
        groups = self.group_names.get(arch.name, [])
        bits: list[tuple[str, int]] = []
        by_bit: dict[int, Value] = {}
        for group, bit in pairs:
            if not self._known(group, groups, "group", f"on {arch.name}"):
                continue
            number = int(bit.value)
            if not 0 <= number < 64:
                self.error(bit.span, f"mask bit {number} is outside 0..63")
                continue
            if number in by_bit:
                self.error(
                    bit.span,
                    f"bit {number} is already owned by group '{by_bit[number].text}'",
                    Note("owned here", by_bit[number].span),
                )
                continue
            by_bit[number] = group
            bits.append((str(group.value), number))
        self._unique("group in mask", [(str(g.value), g.span) for g, _ in pairs])
        for group_name in sorted(set(groups) - {g for g, _ in bits} - {str(g.value) for g, _ in pairs}):
            self.error(bits_entry.span, f"group '{group_name}' of {arch.name} has no bit in mask '{name.text}'")
        return ir.Mask(
            name.text,
            arch.name,
            _first_line(entry),
            name.span,
            str(cmdline.value),
            tuple(sorted(bits, key=lambda b: b[1])),
        )

    def _apply_masks(self, groups: list[ir.Group], masks: list[ir.Mask]) -> list[ir.Group]:
        bits = {(m.arch, g): b for m in masks for g, b in m.bits}
        self._check_fallbacks()
        return [_with_mask_bit(g, bits.get((g.arch, g.name))) for g in groups]

    def _check_fallbacks(self) -> None:
        for arch, values in self._pending_fallbacks:
            if not self.group_names.get(arch):
                continue  # no group of that arch is part of this run
            for value in values:
                self._known(value, self.group_names.get(arch, []), "group", f"on {arch}")

    def _yield(self, entry: Entry) -> ir.Yield | None:
        name = self._declared_name(entry, "a yielding rule")
        self._need_doc(entry, "yield")
        if name is None:
            return None
        block = Block(entry, f"yield '{name.text}'", self.diagnostics, ("arch", "function", "when"))
        arch = self._arch_of(block)
        function = block.name("function", "the routine that bails out")
        when = block.choice("when", ("paravirt_enabled",), "the condition")
        if arch is None or function is None or when is None:
            return None
        under = tuple(
            h.name
            for h in sorted(self.hypervisors.values(), key=lambda h: h.name)
            if arch.name in h.arches and h.paravirt_enabled
        )
        return ir.Yield(
            name.text, arch.name, _first_line(entry), name.span, str(function.value), str(when.value), under
        )

    def _iommu(self, entries: list[Entry]) -> tuple[ir.IommuEntry, ...]:
        found: list[ir.IommuEntry] = []
        depends_span: dict[str, SourceSpan] = {}
        for entry in entries:
            name = self._declared_name(entry, "an IOMMU init entry")
            self._need_doc(entry, "iommu")
            if name is None:
                continue
            block = Block(
                entry,
                f"iommu '{name.text}'",
                self.diagnostics,
                ("arch", "depends", "early_init", "late_init", "finish", "bus", "found_under"),
            )
            arch = self._arch_of(block)
            depends = block.name("depends", "the entry that must run first, or 'none'")
            early, late = block.name("early_init"), block.name("late_init")
            finish = block.flag("finish")
            buses = block.names("bus") or []
            under = block.names("found_under") or []
            if arch is None or depends is None:
                continue
            under_names = [
                str(v.value)
                for v in under
                if self._known(v, self._hypervisors_of(arch.name), "hypervisor", f"on {arch.name}")
            ]
            depends_name = None if depends.value == "none" else str(depends.value)
            if depends_name:
                depends_span[f"{arch.name}.{name.text}"] = depends.span
            found.append(
                ir.IommuEntry(
                    name.text,
                    arch.name,
                    _first_line(entry),
                    name.span,
                    depends_name,
                    str(early.value) if early else None,
                    str(late.value) if late else None,
                    finish,
                    tuple(sorted(str(b.value) for b in buses)),
                    tuple(sorted(under_names)),
                )
            )
        self._unique("IOMMU entry", [(f"{e.arch}.{e.detect}", e.span) for e in found])
        found = list({(e.arch, e.detect): e for e in reversed(found)}.values())
        ordered: list[ir.IommuEntry] = []
        for arch in sorted({e.arch for e in found}):
            ordered += self._iommu_order([e for e in found if e.arch == arch], depends_span)
        return tuple(ordered)

    def _iommu_order(self, entries: list[ir.IommuEntry], depends_span: dict[str, SourceSpan]) -> list[ir.IommuEntry]:
        """Dependencies first, declaration order otherwise; a cycle is an error that prints it."""
        by_name = {e.detect: e for e in entries}
        for entry in entries:
            if entry.depends is not None and entry.depends not in by_name:
                span = depends_span[f"{entry.arch}.{entry.detect}"]
                self.error(
                    span,
                    f"IOMMU entry '{entry.detect}' depends on unknown entry '{entry.depends}'; "
                    f"{expected_one_of([*by_name, 'none'])}",
                )
        reported: set[frozenset[str]] = set()
        for entry in entries:
            path = [entry.detect]
            current = entry
            while current.depends in by_name:
                nxt = by_name[current.depends]  # type: ignore[index]
                if nxt.detect in path:
                    cycle = path[path.index(nxt.detect) :]
                    key = frozenset(cycle)
                    if key not in reported:
                        reported.add(key)
                        start = min(cycle, key=lambda n: by_name[n].span)
                        rotated = cycle[cycle.index(start) :] + cycle[: cycle.index(start)]
                        chain = " -> ".join([*rotated, rotated[0]])
                        notes = [
                            Note(f"'{n}' depends on '{by_name[n].depends}' here", depends_span[f"{entry.arch}.{n}"])
                            for n in rotated
                        ]
                        self.error(by_name[start].span, f"IOMMU init order has a dependency cycle: {chain}", *notes)
                    break
                path.append(nxt.detect)
                current = nxt
        if reported:
            return entries
        placed: list[ir.IommuEntry] = []
        done: set[str] = set()
        remaining = sorted(entries, key=lambda e: e.span)
        while remaining:
            for entry in remaining:
                if entry.depends is None or entry.depends in done or entry.depends not in by_name:
                    placed.append(entry)
                    done.add(entry.detect)
                    remaining.remove(entry)
                    break
        return placed


@attrs.frozen
class _OpContext:
    """What implementation checks need to know about the op they belong to."""

    arch: ir.Arch
    what: str
    category: str
    returns: ir.CType
    params: list[ir.Param]
    override: bool
    callee_save: bool
    clobbers: tuple[str, ...] = ()


def _impl(hypervisor: str, kind: str, text: str | None, span: SourceSpan, source: str) -> ir.Impl:
    if kind == IMPL_CALL_PRESERVING:
        return ir.Impl(hypervisor, ir.IMPL_CALL, text, span, source, preserves_registers=True)
    if kind == IMPL_ASM_OUT_OF_LINE:
        return ir.Impl(hypervisor, ir.IMPL_ASM, text, span, source, out_of_line=True)
    return ir.Impl(hypervisor, kind, text, span, source)


def _name(entry: Entry) -> Value | None:
    values = entry.values
    return values[0] if len(values) == 1 and values[0].kind == "name" else None


def _property_name(entry: Entry, keyword: str) -> str | None:
    for child in entry.children or ():
        if child.keyword == keyword and not child.is_block and len(child.values) == 1:
            return str(child.values[0].value)
    return None


def _op_names(group_entry: Entry) -> list[str]:
    names = []
    for child in group_entry.children or ():
        if child.keyword == "op" and child.groups and child.groups[-1] and child.groups[-1][-1].kind == "name":
            names.append(child.groups[-1][-1].text)
    return names


def _with_index(op: ir.Op, index: int) -> ir.Op:
    return attrs.evolve(op, index=index)


def _with_ops(group: ir.Group, ops: tuple[ir.Op, ...]) -> ir.Group:
    return attrs.evolve(group, ops=ops)


def _with_mask_bit(group: ir.Group, bit: int | None) -> ir.Group:
    return attrs.evolve(group, mask_bit=bit)


def check(loaded: LoadedSpec, diagnostics: Diagnostics) -> ir.Spec | None:
    """The checked IR of a loaded spec, or None with the diagnostics filled in."""
    return Checker(loaded, diagnostics).run()

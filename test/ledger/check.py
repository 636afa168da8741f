#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The promise ledger's check: every promise in a public header has a test that proves it.

Reads the `///` comments of include/netloop/*.hpp, splits them into sentences, and classifies a
sentence as a promise by the rule in PROMISE_WORDS (documented in doc/promises.md). Then reads
doc/promises.md, the ledger, and fails when:
  - a promise sentence of a header is in no ledger entry of that header;
  - an entry's sentence is no longer in its header;
  - an entry names no test (and does not say why it is not a promise), or says TODO;
  - a named test (file and TEST_CASE name) does not exist under test/.
Needs nothing but python3. Usage: check.py [SOURCE_DIR]; exit status 0 when the ledger holds.
"""
import re
import sys
from pathlib import Path

# A sentence is a promise when it says what happens, what is thrown, a bound, thread safety or
# cancellation. These words (case-insensitive, whole words or phrases) mark one.
PROMISE_WORDS = [
    r"throws?", r"thrown", r"rethrow\w*", r"errc::\w+",
    r"never", r"always", r"at once", r"promptly", r"immediately", r"whatever",
    r"bound(s|ed)?", r"at most", r"up to", r"within", r"exceeds?", r"no more than",
    r"safe from", r"thread safety", r"cancel\w*", r"idempotent",
    r"allocat\w*", r"nullopt", r"(is|are|none is) lost", r"not lost", r"loses",
    r"stays? usable", r"retried", r"back(s)? off", r"refused", r"removed", r"removes",
    r"(is|are) closed", r"closes", r"exactly", r"only", r"returns false", r"blocks",
    r"SIGPIPE", r"counted", r"leaves?", r"in order", r"none", r"nothing", r"nobody",
    r"any number", r"every", r"at least", r"verif\w*", r"as soon as possible", r"returns \d",
    r"stays?", r"harmless", r"normalised", r"matches",
]
PROMISE_RE = re.compile(r"(?<![\w:])(" + "|".join(PROMISE_WORDS) + r")(?![\w])", re.IGNORECASE)

ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.")
TEST_CASE_RE = re.compile(r"\bTEST_CASE\s*\(\s*((?:\"(?:[^\"\\\n]|\\.)*\"\s*)+)")
STRING_RE = re.compile(r"\"((?:[^\"\\\n]|\\.)*)\"")
TODO_RE = re.compile(r"TODO\(issue (\d+) item (\d+)\)")
ID_RE = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)+$")


def normalise(text):
    return " ".join(text.split())


def split_sentences(text):
    """Splits at '.', '!' or '?' followed by a space, outside backticks and parentheses."""
    sentences, start, depth, code = [], 0, 0, False
    for i, ch in enumerate(text):
        if ch == "`":
            code = not code
        elif code:
            continue
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(0, depth - 1)
        elif ch in ".!?" and depth == 0 and (i + 1 == len(text) or text[i + 1] == " "):
            if any(text[: i + 1].endswith(a) for a in ABBREVIATIONS):
                continue
            sentence = text[start : i + 1].strip()
            if sentence:
                sentences.append(sentence)
            start = i + 1
    rest = text[start:].strip()
    if rest:
        sentences.append(rest)
    return sentences


def doc_blocks(path):
    """The `///` comments of a header: runs of `///` lines, and each trailing `///<` alone."""
    blocks, current = [], []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("///") and not stripped.startswith("///<"):
            current.append(stripped[3:].strip())
            continue
        if current:
            blocks.append(current)
            current = []
        if "///<" in line:
            blocks.append([line.split("///<", 1)[1].strip()])
    if current:
        blocks.append(current)
    return blocks


def header_sentences(path):
    """Every sentence of a header's doc comments; a table row (`| ... |`) counts as one."""
    out = []
    for block in doc_blocks(path):
        paragraph = []
        for line in block + [""]:
            if line.startswith("|") or not line:
                if paragraph:
                    out.extend(split_sentences(normalise(" ".join(paragraph))))
                    paragraph = []
                if line:
                    out.append(normalise(line))
            else:
                paragraph.append(line)
    return out


def is_promise(sentence):
    return PROMISE_RE.search(sentence.replace("`", "")) is not None


def unescape(literal):
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), literal)


def test_cases(source):
    """{path relative to source: {TEST_CASE name, ...}} for every C++ file under test/."""
    found = {}
    for path in sorted((source / "test").rglob("*.cpp")):
        names = set()
        for m in TEST_CASE_RE.finditer(path.read_text(errors="replace")):
            names.add("".join(unescape(s) for s in STRING_RE.findall(m.group(1))))
        found[path.relative_to(source).as_posix()] = names
    return found


class Entry:
    def __init__(self, header, ident, line):
        self.header, self.id, self.line = header, ident, line
        self.sentences, self.tests, self.todos, self.not_promise = [], [], [], None


def read_ledger(path, problems):
    entries, header, entry, fenced = [], None, None, False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        where = f"{path.name}:{number}"
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        if line.startswith("## "):
            m = re.match(r"^## `?(include/netloop/[\w.]+\.hpp)`?\s*$", line)
            header, entry = (m.group(1) if m else None), None
        elif line.startswith("### "):
            if header is None:
                problems.append(f"{where}: entry outside a '## include/netloop/X.hpp' section")
                entry = None
                continue
            ident = line[4:].strip().strip("`")
            if not ID_RE.match(ident):
                problems.append(f"{where}: id '{ident}' is not of the form 'concept.name[.more]' "
                                "(lower case, digits, '_', '-')")
            entry = Entry(header, ident, where)
            entries.append(entry)
        elif entry is None:
            continue
        elif line.startswith("> "):
            entry.sentences.append(normalise(line[2:]))
        elif line.startswith("- not a promise:"):
            entry.not_promise = line.split(":", 1)[1].strip()
        elif line.startswith("- "):
            item = line[2:].strip()
            todo = TODO_RE.search(item)
            if todo:
                entry.todos.append((todo.group(1), todo.group(2)))
                continue
            m = re.match(r"^`(test/[^`]+\.cpp)`:\s+`(.+)`$", item)
            if not m:
                problems.append(f"{where}: a test line reads \"- `test/FILE.cpp`: `TEST_CASE name`\""
                                f", not: {item}")
                continue
            entry.tests.append((m.group(1), m.group(2), where))
    return entries


def check(source, allow_todo=False):
    problems = []
    ledger_path = source / "doc" / "promises.md"
    if not ledger_path.exists():
        return [f"{ledger_path}: the ledger is missing"]
    entries = read_ledger(ledger_path, problems)
    tests = test_cases(source)

    seen = {}
    for e in entries:
        if e.id in seen:
            problems.append(f"{e.line}: id '{e.id}' is used twice (first at {seen[e.id]})")
        seen.setdefault(e.id, e.line)
        if not e.sentences:
            problems.append(f"{e.line}: entry '{e.id}' quotes no sentence (a '> ' line)")
        if e.not_promise is not None:
            if not e.not_promise:
                problems.append(f"{e.line}: entry '{e.id}' says 'not a promise' without a reason")
            continue
        for issue, item in e.todos:
            if not allow_todo:
                problems.append(f"{e.line}: entry '{e.id}' has no test yet: TODO(issue {issue} "
                                f"item {item}); list the test that item added")
        if not e.tests and not e.todos:
            problems.append(f"{e.line}: entry '{e.id}' names no test; add a line "
                            "\"- `test/FILE.cpp`: `TEST_CASE name`\" for a test that fails when "
                            "the promise is broken")
        for file, name, where in e.tests:
            if file not in tests:
                problems.append(f"{where}: entry '{e.id}' names {file}, which does not exist")
            elif name not in tests[file]:
                problems.append(f"{where}: entry '{e.id}' names a test that {file} does not have: "
                                f"\"{name}\"; fix the name, or the entry if the test moved")

    headers = sorted((source / "include" / "netloop").glob("*.hpp"))
    by_header = {}
    for e in entries:
        by_header.setdefault(e.header, []).append(e)
    known = {h.relative_to(source).as_posix() for h in headers}
    for header in sorted(set(by_header) - known):
        problems.append(f"doc/promises.md: section '{header}' names no public header")

    for path in headers:
        rel = path.relative_to(source).as_posix()
        sentences = header_sentences(path)
        text = normalise(" ".join(sentences))
        listed = set()
        for e in by_header.get(rel, []):
            for s in e.sentences:
                listed.add(s)
                if s not in sentences and s not in text:
                    problems.append(f"{e.line}: entry '{e.id}' quotes a sentence that {rel} no "
                                    f"longer has: \"{s}\"; quote the header's new words, or "
                                    "remove the entry with the promise")
        for s in sentences:
            if is_promise(s) and s not in listed and not any(s in x for x in listed):
                problems.append(f"{rel}: promise without a ledger entry: \"{s}\"; add it to "
                                f"doc/promises.md under '## {rel}' with the test that proves it "
                                "(or as '- not a promise: <reason>')")
    return problems


def self_test():
    """The check on a small made-up tree: each kind of failure is reported, a good ledger passes."""
    import tempfile

    header = (
        "/// Does a thing.\n"
        "///\n"
        "/// Throws `error` with `errc::timeout` after `timeout`. Safe from any thread.\n"
        "void thing();\n"
        "int counter;  ///< counts things, e.g. `thing()` calls\n"
    )
    tests = (
        'TEST_CASE("thing() times out", "[t]") {}\n'
        "TEST_CASE(\n"
        '    "thing() is safe from "\n'
        '    "another \\"thread\\"",\n'
        '    "[t]") {}\n'
    )
    good = (
        "## include/netloop/thing.hpp\n\n"
        "### thing.timeout\n> Throws `error` with `errc::timeout` after `timeout`.\n\n"
        "- `test/thing_test.cpp`: `thing() times out`\n\n"
        "### thing.any-thread\n> Safe from any thread.\n\n"
        '- `test/thing_test.cpp`: `thing() is safe from another "thread"`\n'
    )
    cases = {
        "good": (good, []),
        "promise without entry": (good.split("### thing.any-thread")[0],
                                  ['promise without a ledger entry: "Safe from any thread."']),
        "missing test": (good.replace("thing() times out`", "thing() times out at once`"),
                         ["does not have: \"thing() times out at once\""]),
        "missing file": (good.replace("test/thing_test.cpp`: `thing() times", "test/gone.cpp`: `x"),
                         ["names test/gone.cpp, which does not exist"]),
        "stale sentence": (good + "\n### thing.old\n> Never fails.\n\n- `test/thing_test.cpp`: "
                           "`thing() times out`\n", ['no longer has: "Never fails."']),
        "no test": (good + "\n### thing.none\n> Does a thing.\n\n", ["'thing.none' names no test"]),
        "todo": (good.replace("- `test/thing_test.cpp`: `thing() times out`",
                              "- TODO(issue 25 item 4)"), ["TODO(issue 25 item 4)"]),
    }
    failures = []
    for name, (ledger, expected) in cases.items():
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "include" / "netloop").mkdir(parents=True)
            (root / "doc").mkdir()
            (root / "test").mkdir()
            (root / "include" / "netloop" / "thing.hpp").write_text(header)
            (root / "test" / "thing_test.cpp").write_text(tests)
            (root / "doc" / "promises.md").write_text(ledger)
            problems = check(root)
            if not expected and problems:
                failures.append(f"{name}: expected no problem, got {problems}")
            for want in expected:
                if not any(want in p for p in problems):
                    failures.append(f"{name}: expected a problem with '{want}', got {problems}")
            if expected and len(problems) != len(expected):
                failures.append(f"{name}: expected {len(expected)} problem(s), got {problems}")
    for f in failures:
        print("self-test:", f)
    return 1 if failures else 0


def main(argv):
    if "--self-test" in argv:
        return self_test()
    args = [a for a in argv[1:] if not a.startswith("--")]
    allow_todo = "--allow-todo" in argv
    if "--list" in argv:  # every promise sentence, by header: the raw material of an entry
        source = Path(args[0] if args else ".")
        for path in sorted((source / "include" / "netloop").glob("*.hpp")):
            for s in header_sentences(path):
                if is_promise(s):
                    print(f"{path.name}\t{s}")
        return 0
    source = Path(args[0] if args else Path(__file__).resolve().parents[2])
    problems = check(source, allow_todo)
    for p in problems:
        print(p)
    if problems:
        print(f"promise ledger: {len(problems)} problem(s); see doc/promises.md for the rules")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

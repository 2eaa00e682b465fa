package trim

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// shimPackage is the shim's main package: the code that runs while the
// trimmer is on is every package linked into it.
const shimPackage = "github.com/tether-shim/tether/cmd/containerd-shim-tether-v2"

// threadUse is one place where code locks an OS thread or sets a
// parent-death signal.
type threadUse struct {
	pkg  string // import path
	fn   string // enclosing function, as Recv.Name or Name
	what string // "runtime.LockOSThread", "Pdeathsig" or "PdeathSignal"
}

// allowedThreadUses are the places TestNoThreadLocksOrPdeathsig accepts,
// each with why it is safe while the trimmer ends threads. An entry that
// no longer matches anything fails the test too, so the list stays exact.
var allowedThreadUses = map[threadUse]string{
	{"github.com/tether-shim/tether/internal/trim", "shedThreads", "runtime.LockOSThread"}:  "the trimmer's own: a goroutine that exits with its thread locked ends that thread, which is how shedThreads ends parked threads",
	{"github.com/containerd/go-runc", "defaultMonitor.StartLocked", "runtime.LockOSThread"}: "go-runc's default monitor, never used: runtime.UseGroupMonitor replaces it first thing in main, and go-runc calls StartLocked only for a Runc with PdeathSignal set",
	{"github.com/containerd/go-runc", "Runc.commandWithCustomLogFile", "Pdeathsig"}:         "copies Runc.PdeathSignal, which the shim never sets: a PdeathSignal set in any other package fails this test",
}

// TestNoThreadLocksOrPdeathsig enforces the trimmer's first invariant (see
// the package doc): no code linked into the shim locks an OS thread or sets
// a parent-death signal, but for allowedThreadUses. It reads the source of
// every non-standard package the shim links (go list -deps, the Linux
// build's files) and finds, in the syntax tree, each call of
// runtime.LockOSThread and each assignment to, or composite-literal key
// of, a field named Pdeathsig (syscall.SysProcAttr) or PdeathSignal
// (go-runc's Runc). A source scan rather than a runtime check: Go offers no
// hook on LockOSThread, and a parent-death signal shows only once a child
// outlives the thread that started it, which no test could wait for. The
// standard library is not scanned: it holds the mechanisms themselves
// (runtime, syscall's forkExec), which run only when asked by a caller the
// scan sees.
func TestNoThreadLocksOrPdeathsig(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}\t{{.Dir}}\t{{join .GoFiles \" \"}}{{end}}", shimPackage)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", shimPackage, err, stderr.String())
	}
	found := map[threadUse]bool{}
	var bad []string
	packages := 0
	for line := range strings.Lines(string(out)) {
		fields := strings.Split(strings.TrimSpace(line), "\t")
		if len(fields) != 3 {
			continue
		}
		pkg, dir := fields[0], fields[1]
		packages++
		for _, name := range strings.Fields(fields[2]) {
			path := filepath.Join(dir, name)
			for _, u := range scanThreadUses(t, path) {
				u.use.pkg = pkg
				if _, ok := allowedThreadUses[u.use]; ok {
					found[u.use] = true
					continue
				}
				bad = append(bad, fmt.Sprintf("%s: %s in %s", u.pos, u.use.what, u.use.fn))
			}
		}
	}
	if packages == 0 || !slices.ContainsFunc(strings.Split(string(out), "\n"), func(l string) bool {
		return strings.HasPrefix(l, "github.com/tether-shim/tether/internal/trim\t")
	}) {
		t.Fatalf("go list found %d packages, without this one: the scan shows nothing\n%s", packages, out)
	}
	for _, b := range bad {
		t.Errorf("%s: the trimmer ends OS threads, so nothing in the shim may lock one or tie a child to one (internal/trim's package doc); if it is safe, add it to allowedThreadUses with the reason", b)
	}
	for u, why := range allowedThreadUses {
		if !found[u] {
			t.Errorf("allowedThreadUses entry %+v (%s) matches nothing: remove it", u, why)
		}
	}
}

// positionedUse is a threadUse found at pos.
type positionedUse struct {
	use threadUse
	pos token.Position
}

// scanThreadUses parses the Go file path and returns its thread uses
// (without pkg).
func scanThreadUses(t *testing.T, path string) []positionedUse {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	runtimeNames := map[string]bool{}
	for _, imp := range f.Imports {
		if imp.Path.Value == `"runtime"` {
			name := "runtime"
			if imp.Name != nil {
				name = imp.Name.Name
			}
			runtimeNames[name] = true
		}
	}
	var uses []positionedUse
	for _, decl := range f.Decls {
		fn := declName(decl)
		ast.Inspect(decl, func(n ast.Node) bool {
			var what string
			switch n := n.(type) {
			case *ast.CallExpr:
				if sel, ok := n.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "LockOSThread" {
					if id, ok := sel.X.(*ast.Ident); ok && runtimeNames[id.Name] {
						what = "runtime.LockOSThread"
					}
				}
			case *ast.AssignStmt:
				for _, lhs := range n.Lhs {
					if sel, ok := lhs.(*ast.SelectorExpr); ok && isDeathSignal(sel.Sel.Name) {
						what = sel.Sel.Name
					}
				}
			case *ast.KeyValueExpr:
				if id, ok := n.Key.(*ast.Ident); ok && isDeathSignal(id.Name) {
					what = id.Name
				}
			}
			if what != "" {
				uses = append(uses, positionedUse{threadUse{fn: fn, what: what}, fset.Position(n.Pos())})
			}
			return true
		})
	}
	return uses
}

func isDeathSignal(name string) bool { return name == "Pdeathsig" || name == "PdeathSignal" }

// declName names a top-level declaration: Recv.Name for a method, Name for
// a function, "" for the rest (package-level var initialisers).
func declName(decl ast.Decl) string {
	fd, ok := decl.(*ast.FuncDecl)
	if !ok {
		return ""
	}
	if fd.Recv == nil || len(fd.Recv.List) == 0 {
		return fd.Name.Name
	}
	typ := fd.Recv.List[0].Type
	if star, ok := typ.(*ast.StarExpr); ok {
		typ = star.X
	}
	if idx, ok := typ.(*ast.IndexExpr); ok {
		typ = idx.X
	}
	if id, ok := typ.(*ast.Ident); ok {
		return id.Name + "." + fd.Name.Name
	}
	return fd.Name.Name
}

// TestThreadUseScan: the scan finds what it looks for, however it is
// written, and nothing else.
func TestThreadUseScan(t *testing.T) {
	src := `package p

import (
	rt "runtime"
	"syscall"
)

type T struct{}

func locks() { rt.LockOSThread() }

func (*T) sets(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGKILL }

func literal() any { return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM} }

func runc() any { return struct{ PdeathSignal syscall.Signal }{PdeathSignal: 9} }

func fine(a *syscall.SysProcAttr, r struct{ PdeathSignal int }) (syscall.Signal, int) {
	rt.UnlockOSThread()
	return a.Pdeathsig, r.PdeathSignal
}
`
	path := filepath.Join(t.TempDir(), "p.go")
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, u := range scanThreadUses(t, path) {
		got = append(got, u.use.fn+" "+u.use.what)
	}
	want := []string{"locks runtime.LockOSThread", "T.sets Pdeathsig", "literal Pdeathsig", "runc PdeathSignal"}
	if !slices.Equal(got, want) {
		t.Fatalf("scan found %q, want %q", got, want)
	}
}

// costlyPackages are packages the shim must not link, each with what it
// would cost: their init allocates heap that stays for the shim's
// lifetime, which every idle shim would pay (docs/performance.md, "What
// the 2026-12-07 refactor and tools cost an idle shim";
// GODEBUG=inittrace=1 on the shim shows each package's init).
var costlyPackages = map[string]string{
	"google.golang.org/protobuf/types/known/wrapperspb": "about 12 kB: its init registers nine message types; carry bytes in the anypb.Any linked anyway (introspect.BytesType, upgrade's JSON type)",
	"runtime/metrics": "about 15 kB: its init copies the table of metric descriptions; runtime.ReadMemStats gives the same heap and total figures",
	"google.golang.org/protobuf/reflect/protodesc": "about 160 kB: its init builds the editions' feature defaults",
}

// TestNoCostlyPackagesLinked: the shim links none of costlyPackages.
func TestNoCostlyPackagesLinked(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", shimPackage)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", shimPackage, err, stderr.String())
	}
	linked := 0
	for line := range strings.Lines(string(out)) {
		pkg := strings.TrimSpace(line)
		linked++
		if why, ok := costlyPackages[pkg]; ok {
			t.Errorf("the shim links %s, which costs every shim %s", pkg, why)
		}
	}
	if linked < 50 {
		t.Fatalf("go list -deps %s listed %d packages; the shim links far more:\n%s", shimPackage, linked, out)
	}
}

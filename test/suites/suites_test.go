package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestRegistryServesStandInsThroughProxy pulls a stand-in's index, manifest
// and a blob by an arbitrary registry host name through the proxy, trusting
// only the registry's CA, and checks every digest.
func TestRegistryServesStandInsThroughProxy(t *testing.T) {
	store := NewStore()
	digests, err := StandIns(store, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg, err := StartRegistry(ctx, log, store, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	pem, err := os.ReadFile(reg.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("CA file holds no certificate")
	}
	proxy, err := url.Parse(reg.URL)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		Proxy:           http.ProxyURL(proxy),
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
	}}
	get := func(path string) ([]byte, *http.Response) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://registry.stand-in.invalid"+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return b, resp
	}
	check := func(b []byte, want string) {
		t.Helper()
		sum := sha256.Sum256(b)
		if got := "sha256:" + hex.EncodeToString(sum[:]); got != want {
			t.Fatalf("content digest %s, want %s", got, want)
		}
	}

	idx, resp := get("/v2/containerd/busybox/manifests/1.36")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != mtIndex {
		t.Fatalf("index: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	check(idx, digests["containerd/busybox"])
	check(idx, resp.Header.Get("Docker-Content-Digest"))
	var index struct {
		Manifests []struct {
			Digest   string
			Platform struct{ Architecture, OS string }
		}
	}
	if err := json.Unmarshal(idx, &index); err != nil {
		t.Fatal(err)
	}
	if len(index.Manifests) != 1+len(otherPlatforms) {
		t.Fatalf("index has %d manifests, want %d", len(index.Manifests), 1+len(otherPlatforms))
	}
	m, resp := get("/v2/containerd/busybox/manifests/" + index.Manifests[0].Digest)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("manifest: %s", resp.Status)
	}
	check(m, index.Manifests[0].Digest)
	var manifest struct{ Layers []struct{ Digest string } }
	if err := json.Unmarshal(m, &manifest); err != nil {
		t.Fatal(err)
	}
	if len(manifest.Layers) == 0 {
		t.Fatal("manifest without layers")
	}
	l, resp := get("/v2/containerd/busybox/blobs/" + manifest.Layers[0].Digest)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("blob: %s", resp.Status)
	}
	check(l, manifest.Layers[0].Digest)

	if _, resp := get("/v2/containerd/busybox/manifests/no-such-tag"); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown tag: %s, want 404", resp.Status)
	}
	if _, resp := get("/v2/no/such/repo/manifests/latest"); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown repository: %s, want 404", resp.Status)
	}
	if digests["pause"] == digests["containerd/busybox"] {
		t.Fatal("pause and busybox stand-ins share an index: pulling one would make the other look pulled")
	}
}

// TestParseGoTestCountsTopLevelTests counts only top-level results and keeps
// a failed test's own lines as its error.
func TestParseGoTestCountsTopLevelTests(t *testing.T) {
	out := `=== RUN   TestA
--- PASS: TestA (0.01s)
=== RUN   TestB
=== RUN   TestB/sub
    b_test.go:10: boom
    --- FAIL: TestB/sub (0.00s)
--- FAIL: TestB (0.00s)
=== RUN   TestC
    c_test.go:3: no criu
--- SKIP: TestC (0.00s)
`
	c := parseGoTest(strings.NewReader(out))
	if len(c.Pass) != 1 || len(c.Fail) != 1 || len(c.Skip) != 1 {
		t.Fatalf("counts %s, want 1/1/1", c)
	}
	if !strings.Contains(c.Errors["TestB"], "boom") {
		t.Fatalf("TestB's error %q lacks its line", c.Errors["TestB"])
	}
}

// TestParseGinkgoSummary reads the counts and the failed specs' names.
func TestParseGinkgoSummary(t *testing.T) {
	out := `Summarizing 1 Failure:
  [FAIL] [k8s.io] Container runtime should support basic operations on container [It] runtime should support execSync with timeout [Conformance]
  /x/container.go:174

Ran 12 of 113 Specs in 99.1 seconds
FAIL! -- 11 Passed | 1 Failed | 0 Pending | 101 Skipped
`
	c := parseGinkgo(strings.NewReader(out))
	if len(c.Pass) != 11 || len(c.Fail) != 1 || len(c.Skip) != 101 || c.Aborted != "" {
		t.Fatalf("counts %s, want 11/1/101", c)
	}
	if !strings.Contains(c.Fail[0], "execSync with timeout") {
		t.Fatalf("failed spec %q", c.Fail[0])
	}
}

// TestRerunCountsOnlyWhatPassed: a test counts as passed on its rerun only
// if the rerun says so; a critest rerun that ran fewer specs than it would
// clear clears none; an aborted rerun clears none.
func TestRerunCountsOnlyWhatPassed(t *testing.T) {
	got := passedOnRerun([]string{"TestA", "TestB"}, Counts{Pass: []string{"TestA"}, Fail: []string{"TestB"}}, true)
	if len(got) != 1 || got[0] != "TestA" {
		t.Fatalf("go tests: %v, want [TestA]", got)
	}
	if got := passedOnRerun([]string{"TestA"}, Counts{}, true); len(got) != 0 {
		t.Fatalf("a go test the rerun did not run: %v, want none", got)
	}
	if got := passedOnRerun([]string{"spec a", "spec b"}, Counts{Pass: []string{"spec 0"}}, false); len(got) != 0 {
		t.Fatalf("critest rerun with 1 pass for 2 specs: %v, want none", got)
	}
	if got := passedOnRerun([]string{"TestA"}, Counts{Pass: []string{"TestA"}, Aborted: "panic"}, true); len(got) != 0 {
		t.Fatalf("aborted rerun: %v, want none", got)
	}
	if s := specText("[k8s.io] Container runtime should support basic operations on container [It] runtime should support execSync [Conformance]"); strings.Contains(s, "[It]") {
		t.Fatalf("specText kept the node marker: %q", s)
	}
}

// TestRerunAloneRunsOnlyWhatStillFails: each rerun runs only the tests not
// yet passed, at most reruns times, and a test that never passes is not
// reported as flaky.
func TestRerunAloneRunsOnlyWhatStillFails(t *testing.T) {
	var runs [][]string
	passes := map[string]int{"TestA": 1, "TestB": 3} // the rerun in which each passes
	failed := []string{"TestA", "TestB", "TestC"}
	got := rerunAlone(failed, func(tests []string, suffix string) (Counts, error) {
		runs = append(runs, slices.Clone(tests))
		var c Counts
		for _, tt := range tests {
			if passes[tt] == len(runs) {
				c.Pass = append(c.Pass, tt)
			} else {
				c.Fail = append(c.Fail, tt)
			}
		}
		return c, nil
	}, true)
	if !slices.Equal(got, []string{"TestA", "TestB"}) {
		t.Fatalf("flaky: %v, want [TestA TestB]", got)
	}
	want := [][]string{{"TestA", "TestB", "TestC"}, {"TestB", "TestC"}, {"TestB", "TestC"}}
	if len(runs) != reruns || !slices.EqualFunc(runs, want, slices.Equal) {
		t.Fatalf("reruns ran %v, want %v", runs, want)
	}
	if !slices.Equal(failed, []string{"TestA", "TestB", "TestC"}) {
		t.Fatalf("rerunAlone changed its argument: %v", failed)
	}
}

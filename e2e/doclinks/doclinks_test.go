// Package doclinks checks the project's Markdown: every relative link
// names a file of the checkout, and every #anchor a heading of the page it
// points into (as GitHub renders the anchors), so moving a section between
// pages cannot leave a reader at a dead link.
package doclinks

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

const repoRoot = "../.."

// pages are the Markdown files a reader follows links through.
func pages(t *testing.T) []string {
	t.Helper()
	docs, err := filepath.Glob(filepath.Join(repoRoot, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	return append([]string{filepath.Join(repoRoot, "README.md")}, docs...)
}

var (
	heading = regexp.MustCompile(`^(#{1,6})\s+(.*?)\s*#*\s*$`)
	link    = regexp.MustCompile(`!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)
	code    = regexp.MustCompile("`[^`]*`")
)

// prose returns the lines outside fenced code blocks.
func prose(text string) []string {
	var out []string
	fenced := false
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "```") {
			fenced = !fenced
			continue
		}
		if !fenced {
			out = append(out, l)
		}
	}
	return out
}

// slug is GitHub's anchor for a heading: lower case, inline code and
// punctuation dropped, spaces to hyphens.
func slug(h string) string {
	h = strings.ReplaceAll(h, "`", "")
	var b strings.Builder
	for _, r := range strings.ToLower(h) {
		switch {
		case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteRune('-')
		}
	}
	return b.String()
}

// anchors are a page's heading anchors, duplicates numbered as GitHub
// numbers them.
func anchors(text string) map[string]bool {
	out := map[string]bool{}
	seen := map[string]int{}
	for _, l := range prose(text) {
		m := heading.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		s := slug(m[2])
		if n := seen[s]; n > 0 {
			out[s+"-"+itoa(n)] = true
		} else {
			out[s] = true
		}
		seen[s]++
	}
	return out
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestSlugIsGitHubs(t *testing.T) {
	for h, want := range map[string]string{
		"Customer Web Server (`webserver`, `HTTP_ADDR` default `:8080`)": "customer-web-server-webserver-http_addr-default-8080",
		"1,000 HPAs through the real HPA controller":                     "1000-hpas-through-the-real-hpa-controller",
		"Autoscaling: from a load step to the first scale-out":           "autoscaling-from-a-load-step-to-the-first-scale-out",
	} {
		if got := slug(h); got != want {
			t.Errorf("slug(%q) = %q, want %q", h, got, want)
		}
	}
}

func TestEveryRelativeLinkAndAnchorResolves(t *testing.T) {
	cache := map[string]map[string]bool{}
	anchorsOf := func(path string) (map[string]bool, bool) {
		if a, ok := cache[path]; ok {
			return a, true
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, false
		}
		cache[path] = anchors(string(b))
		return cache[path], true
	}
	checked := 0
	for _, page := range pages(t) {
		b, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		name, _ := filepath.Rel(repoRoot, page)
		for i, l := range prose(string(b)) {
			for _, m := range link.FindAllStringSubmatch(code.ReplaceAllString(l, ""), -1) {
				target := m[1]
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				checked++
				file, anchor, _ := strings.Cut(target, "#")
				path := page
				if file != "" {
					path = filepath.Join(filepath.Dir(page), file)
					if _, err := os.Stat(path); err != nil {
						t.Errorf("%s (prose line %d): %s: no such file", name, i+1, target)
						continue
					}
				}
				if anchor == "" || !strings.HasSuffix(path, ".md") {
					continue
				}
				if a, ok := anchorsOf(path); !ok || !a[anchor] {
					t.Errorf("%s (prose line %d): %s: no heading with that anchor in %s", name, i+1, target, filepath.Base(path))
				}
			}
		}
	}
	if checked == 0 {
		t.Fatal("no relative link found: the pattern no longer matches the pages")
	}
	t.Logf("%d relative links checked in %d pages", checked, len(pages(t)))
}

package manifest

import (
	"bufio"
	"errors"
	"fmt"
	"go/build"
	"os"
	"path/filepath"
	"strings"
)

// goModFile names the file that marks a Go module's root.
const goModFile = "go.mod"

// checkImages requires every container image to be a ko:// path to a main package of this module.
func (s *Set) checkImages() []error {
	root, modPath, err := s.module()
	if err != nil {
		return []error{fmt.Errorf("%w: %w", ErrImage, err)}
	}
	var errs []error
	for _, p := range s.podSpecs() {
		for _, c := range containers(p.spec) {
			if err := checkImage(root, modPath, c.Image); err != nil {
				errs = append(errs, fmt.Errorf("%s: container %q: %w: %w", p.owner, c.Name, ErrImage, err))
			}
		}
	}
	return errs
}

// checkImage resolves one ko:// image to a directory of the module and requires package main there.
func checkImage(root, modPath, image string) error {
	importPath, ok := strings.CutPrefix(image, koPrefix)
	if !ok {
		return fmt.Errorf("%q is not a ko:// reference", image)
	}
	rel, ok := strings.CutPrefix(importPath, modPath)
	if !ok || (rel != "" && !strings.HasPrefix(rel, "/")) {
		return fmt.Errorf("%q is outside module %s", image, modPath)
	}
	dir := filepath.Join(root, filepath.FromSlash(strings.TrimPrefix(rel, "/")))
	pkg, err := build.ImportDir(dir, 0)
	if err != nil {
		return fmt.Errorf("%q: no buildable Go package in %s: %w", image, dir, err)
	}
	if pkg.Name != "main" {
		return fmt.Errorf("%q: package %s in %s is not a main package", image, pkg.Name, dir)
	}
	return nil
}

// module returns the module root (ModuleRoot, or the nearest go.mod above the working directory) and
// the module path its go.mod declares.
func (s *Set) module() (root, modPath string, err error) {
	root = s.ModuleRoot
	if root == "" {
		if root, err = findModuleRoot(); err != nil {
			return "", "", err
		}
	}
	modPath, err = readModulePath(filepath.Join(root, goModFile))
	return root, modPath, err
}

// findModuleRoot walks up from the working directory to the first directory with a go.mod.
func findModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find module root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, goModFile)); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find module root: no go.mod above the working directory")
		}
		dir = parent
	}
}

// readModulePath returns the path of the module directive of a go.mod file.
func readModulePath(goMod string) (string, error) {
	f, err := os.Open(goMod)
	if err != nil {
		return "", fmt.Errorf("read module path: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			rest, _, _ = strings.Cut(rest, "//")
			return strings.Trim(strings.TrimSpace(rest), `"`), nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read module path of %s: %w", goMod, err)
	}
	return "", fmt.Errorf("read module path: no module directive in %s", goMod)
}

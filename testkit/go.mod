module github.com/tether-shim/tether/testkit

go 1.26.0

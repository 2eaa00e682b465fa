module github.com/tether-shim/tether/bench

go 1.26.0

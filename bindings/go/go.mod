module libgptq/bindings/go

go 1.18

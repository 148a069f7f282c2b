#include "torch_save_reader.h"

#include "zip_archive.h"

#include <ATen/ATen.h>

#include <cstring>
#include <iterator>
#include <map>
#include <memory>
#include <variant>

namespace rotary_attention::detail {
namespace {

struct Value;
using ValuePtr = std::shared_ptr<Value>;

struct Global {
  std::string module, name;
};
struct Mark {};
struct Tuple {
  std::vector<ValuePtr> items;
};
struct List {
  std::vector<ValuePtr> items;
};
struct Dict {
  std::vector<std::pair<ValuePtr, ValuePtr>> items;
};
struct Storage {
  at::Tensor flat; // 1-D tensor over the whole storage
};

struct Value {
  std::variant<
      std::monostate,
      bool,
      int64_t,
      double,
      std::string,
      Global,
      Mark,
      Tuple,
      List,
      Dict,
      Storage,
      at::Tensor>
      v;
  ~Value();
};

// Moves a container's items out, so that they can be released one by one.
void take_children(Value& value, std::vector<ValuePtr>& out) {
  if (auto* l = std::get_if<List>(&value.v)) {
    std::move(l->items.begin(), l->items.end(), std::back_inserter(out));
    l->items.clear();
  } else if (auto* t = std::get_if<Tuple>(&value.v)) {
    std::move(t->items.begin(), t->items.end(), std::back_inserter(out));
    t->items.clear();
  } else if (auto* d = std::get_if<Dict>(&value.v)) {
    for (auto& [k, v] : d->items) {
      out.push_back(std::move(k));
      out.push_back(std::move(v));
    }
    d->items.clear();
  }
}

// Released iteratively: a crafted pickle can nest lists a million deep, and
// recursive destruction would overflow the stack.
Value::~Value() {
  std::vector<ValuePtr> pending;
  take_children(*this, pending);
  while (!pending.empty()) {
    ValuePtr p = std::move(pending.back());
    pending.pop_back();
    if (p && p.use_count() == 1) {
      take_children(*p, pending);
    }
  }
}

template <typename T>
ValuePtr make(T x) {
  auto p = std::make_shared<Value>();
  p->v = std::move(x);
  return p;
}

template <typename T>
const T& as(const ValuePtr& p, const char* what) {
  const T* x = std::get_if<T>(&p->v);
  TORCH_CHECK(x != nullptr, "load_tensors: malformed state dict file (expected ", what, ")");
  return *x;
}

// Pickle strings are UTF-8; keys that are not could not reach Python, or a
// user, as text. Checks the encoding's shape (lengths and continuation bytes,
// no overlong forms or surrogates).
bool is_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<uint8_t>(s[i]);
    size_t n;
    uint32_t code;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      n = 1, code = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      n = 2, code = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      n = 3, code = c & 0x07;
    } else {
      return false;
    }
    if (i + n >= s.size()) {
      return false; // truncated sequence
    }
    for (size_t k = 1; k <= n; ++k) {
      const auto next = static_cast<uint8_t>(s[i + k]);
      if ((next & 0xc0) != 0x80) {
        return false;
      }
      code = (code << 6) | (next & 0x3f);
    }
    static constexpr uint32_t kSmallest[] = {0, 0x80, 0x800, 0x10000};
    if (code < kSmallest[n] || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) {
      return false;
    }
    i += n + 1;
  }
  return true;
}

c10::ScalarType storage_dtype(const std::string& name) {
  for (auto t :
       {at::kFloat,
        at::kDouble,
        at::kHalf,
        at::kBFloat16,
        at::kLong,
        at::kInt,
        at::kShort,
        at::kChar,
        at::kByte,
        at::kBool,
        at::kComplexFloat,
        at::kComplexDouble}) {
    if (name == std::string(c10::toString(t)) + "Storage") {
      return t;
    }
  }
  TORCH_CHECK(false, "load_tensors: unsupported storage type torch.", name);
}

class Reader {
 public:
  Reader(const ZipArchive& zip, std::string pkl) : zip_(zip), data_(std::move(pkl)) {}
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  // A pickle can make a container hold itself (through the memo); emptying
  // every memoized container breaks such cycles, which would otherwise leak.
  ~Reader() {
    std::vector<ValuePtr> pending;
    for (auto& [index, value] : memo_) {
      take_children(*value, pending);
    }
  }

  ValuePtr run() {
    while (true) {
      const uint8_t op = u8();
      switch (op) {
        case 0x80:
          u8();
          break; // PROTO
        case 0x95:
          read(8);
          break; // FRAME
        case '.':
          return pop(); // STOP
        case 'c': {     // GLOBAL
          std::string module = line();
          push(make(Global{module, line()}));
          break;
        }
        case 0x93: { // STACK_GLOBAL
          std::string name = as<std::string>(pop(), "a name");
          push(make(Global{as<std::string>(pop(), "a module"), name}));
          break;
        }
        case 'q':
          memo_[u8()] = top();
          break; // BINPUT
        case 'r':
          memo_[u32()] = top();
          break; // LONG_BINPUT
        case 0x94:
          memo_[memo_.size()] = top();
          break; // MEMOIZE
        case 'h':
          push(memo(u8()));
          break; // BINGET
        case 'j':
          push(memo(u32()));
          break; // LONG_BINGET
        case '(':
          push(make(Mark{}));
          break;
        case '}':
          push(make(Dict{}));
          break;
        case ']':
          push(make(List{}));
          break;
        case ')':
          push(make(Tuple{}));
          break;
        case 'N':
          push(make(std::monostate{}));
          break;
        case 0x88:
          push(make(true));
          break;
        case 0x89:
          push(make(false));
          break;
        case 'K':
          push(make(static_cast<int64_t>(u8())));
          break;
        case 'M':
          push(make(static_cast<int64_t>(u16())));
          break;
        case 'J':
          push(make(static_cast<int64_t>(static_cast<int32_t>(u32()))));
          break;
        case 0x8a:
          push(make(long1()));
          break; // LONG1
        case 'G':
          push(make(binfloat()));
          break;
        case 'X':
          push(make(utf8(read(u32()))));
          break; // BINUNICODE
        case 0x8c:
          push(make(utf8(read(u8()))));
          break; // SHORT_BINUNICODE
        case 't':
          push(make(Tuple{pop_to_mark()}));
          break;
        case 0x85:
          push(make(Tuple{pop_n(1)}));
          break;
        case 0x86:
          push(make(Tuple{pop_n(2)}));
          break;
        case 0x87:
          push(make(Tuple{pop_n(3)}));
          break;
        case 'a': { // APPEND
          auto item = pop();
          list_of(top()).push_back(item);
          break;
        }
        case 'e': { // APPENDS
          auto items = pop_to_mark();
          auto& l = list_of(top());
          l.insert(l.end(), items.begin(), items.end());
          break;
        }
        case 's': { // SETITEM
          auto value = pop();
          auto key = pop();
          dict_of(top()).items.emplace_back(key, value);
          break;
        }
        case 'u': { // SETITEMS
          auto items = pop_to_mark();
          TORCH_CHECK(items.size() % 2 == 0, "load_tensors: malformed SETITEMS");
          auto& d = dict_of(top());
          for (size_t i = 0; i < items.size(); i += 2) {
            d.items.emplace_back(items[i], items[i + 1]);
          }
          break;
        }
        case 'b':
          pop();
          break; // BUILD: an OrderedDict's state (_metadata) is not needed
        case 'Q':
          push(persistent_load(pop()));
          break;    // BINPERSID
        case 'R': { // REDUCE
          auto args = pop();
          auto callable = pop();
          push(reduce(as<Global>(callable, "a callable"), as<Tuple>(args, "arguments").items));
          break;
        }
        default:
          TORCH_CHECK(
              false,
              "load_tensors: unsupported pickle opcode 0x",
              std::hex,
              int(op),
              " (the file should hold a dict of tensors saved with torch.save)");
      }
    }
  }

 private:
  ValuePtr reduce(const Global& g, const std::vector<ValuePtr>& args) {
    if (g.module == "collections" && g.name == "OrderedDict") {
      return make(Dict{});
    }
    if (g.module == "torch._utils" && g.name == "_rebuild_tensor_v2") {
      TORCH_CHECK(args.size() >= 4, "load_tensors: malformed tensor record");
      const at::Tensor& flat = as<Storage>(args[0], "a storage").flat;
      const int64_t offset = as<int64_t>(args[1], "an offset");
      std::vector<int64_t> sizes, strides;
      for (const auto& s : as<Tuple>(args[2], "sizes").items)
        sizes.push_back(as<int64_t>(s, "a size"));
      for (const auto& s : as<Tuple>(args[3], "strides").items)
        strides.push_back(as<int64_t>(s, "a stride"));
      return make(flat.as_strided(sizes, strides, offset));
    }
    if (g.module == "torch._utils" && g.name == "_rebuild_parameter") {
      return make(as<at::Tensor>(args.at(0), "a tensor"));
    }
    // Tensor backward hooks are pickled as an empty OrderedDict; anything else is unsupported.
    TORCH_CHECK(
        false,
        "load_tensors: unsupported object ",
        g.module,
        ".",
        g.name,
        " (the file should hold a dict of tensors saved with torch.save)");
  }

  ValuePtr persistent_load(const ValuePtr& id) {
    const auto& t = as<Tuple>(id, "a storage id").items;
    TORCH_CHECK(
        t.size() == 5 && as<std::string>(t[0], "'storage'") == "storage",
        "load_tensors: malformed storage id");
    const auto dtype = storage_dtype(as<Global>(t[1], "a storage type").name);
    const std::string key = as<std::string>(t[2], "a storage key");
    const int64_t numel = as<int64_t>(t[4], "a storage size");
    auto it = storages_.find(key);
    if (it != storages_.end()) {
      TORCH_CHECK(
          it->second.scalar_type() == dtype && it->second.numel() == numel,
          "load_tensors: storage ",
          key,
          " is named twice with different types or sizes");
      return make(Storage{it->second});
    }
    // The record's size is checked against the element count before anything
    // is allocated: a crafted count cannot make the reader allocate more than
    // the file holds.
    const std::string record = "data/" + key;
    TORCH_CHECK(zip_.has(record), "load_tensors: storage ", key, " has no record ", record);
    const uint64_t nbytes = zip_.size(record); // no more than the file holds
    const uint64_t item = c10::elementSize(dtype);
    TORCH_CHECK(
        numel >= 0 && static_cast<uint64_t>(numel) <= nbytes / item &&
            static_cast<uint64_t>(numel) * item == nbytes,
        "load_tensors: storage ",
        key,
        " has ",
        nbytes,
        " bytes, which do not hold ",
        numel,
        " elements of ",
        dtype);
    at::Tensor flat = at::empty({numel}, at::TensorOptions().dtype(dtype));
    if (nbytes > 0) {
      zip_.read(record, flat.data_ptr(), nbytes);
    }
    storages_.emplace(key, flat);
    return make(Storage{flat});
  }

  std::vector<ValuePtr>& list_of(const ValuePtr& p) {
    auto* l = std::get_if<List>(&p->v);
    TORCH_CHECK(l != nullptr, "load_tensors: malformed APPEND");
    return l->items;
  }
  Dict& dict_of(const ValuePtr& p) {
    auto* d = std::get_if<Dict>(&p->v);
    TORCH_CHECK(d != nullptr, "load_tensors: malformed SETITEM");
    return *d;
  }

  void push(ValuePtr v) {
    stack_.push_back(std::move(v));
  }
  ValuePtr top() {
    TORCH_CHECK(!stack_.empty(), "load_tensors: malformed pickle (empty stack)");
    return stack_.back();
  }
  ValuePtr pop() {
    auto v = top();
    stack_.pop_back();
    return v;
  }
  std::vector<ValuePtr> pop_n(size_t n) {
    TORCH_CHECK(stack_.size() >= n, "load_tensors: malformed pickle (short stack)");
    std::vector<ValuePtr> out(stack_.end() - n, stack_.end());
    stack_.resize(stack_.size() - n);
    return out;
  }
  std::vector<ValuePtr> pop_to_mark() {
    for (size_t i = stack_.size(); i-- > 0;) {
      if (std::holds_alternative<Mark>(stack_[i]->v)) {
        std::vector<ValuePtr> out(stack_.begin() + i + 1, stack_.end());
        stack_.resize(i);
        return out;
      }
    }
    TORCH_CHECK(false, "load_tensors: malformed pickle (no MARK)");
  }
  ValuePtr memo(size_t i) {
    auto it = memo_.find(i);
    TORCH_CHECK(it != memo_.end(), "load_tensors: malformed pickle (memo ", i, ")");
    return it->second;
  }

  std::string utf8(std::string s) {
    TORCH_CHECK(is_utf8(s), "load_tensors: malformed pickle (a string is not UTF-8)");
    return s;
  }
  std::string read(size_t n) {
    TORCH_CHECK(pos_ + n <= data_.size(), "load_tensors: truncated pickle");
    std::string s = data_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  uint64_t little_endian(size_t n) {
    const std::string b = read(n);
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i)
      v |= static_cast<uint64_t>(static_cast<uint8_t>(b[i])) << (8 * i);
    return v;
  }
  uint8_t u8() {
    return static_cast<uint8_t>(little_endian(1));
  }
  uint16_t u16() {
    return static_cast<uint16_t>(little_endian(2));
  }
  uint32_t u32() {
    return static_cast<uint32_t>(little_endian(4));
  }
  int64_t long1() {
    const size_t n = u8();
    TORCH_CHECK(n <= 8, "load_tensors: integer too large");
    if (n == 0)
      return 0;
    uint64_t v = little_endian(n);
    if (n < 8 && (v >> (8 * n - 1)) & 1)
      v |= ~uint64_t(0) << (8 * n); // sign-extend
    return static_cast<int64_t>(v);
  }
  double binfloat() { // big-endian IEEE double
    const std::string b = read(8);
    uint64_t bits = 0;
    for (char c : b)
      bits = (bits << 8) | static_cast<uint8_t>(c);
    double d;
    std::memcpy(&d, &bits, sizeof d);
    return d;
  }
  std::string line() {
    const size_t end = data_.find('\n', pos_);
    TORCH_CHECK(end != std::string::npos, "load_tensors: truncated pickle");
    std::string s = data_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return utf8(std::move(s));
  }

  const ZipArchive& zip_;
  std::string data_;
  size_t pos_ = 0;
  std::vector<ValuePtr> stack_;
  std::map<size_t, ValuePtr> memo_;
  std::map<std::string, at::Tensor> storages_;
};

} // namespace

std::vector<std::pair<std::string, at::Tensor>> read_torch_save_dict(const std::string& path) {
  const ZipArchive zip(path);
  TORCH_CHECK(zip.has("data.pkl"), "load_tensors: '", path, "' has no data.pkl record");
  std::string pkl(zip.size("data.pkl"), '\0');
  if (!pkl.empty()) {
    zip.read("data.pkl", pkl.data(), pkl.size());
  }
  Reader reader(zip, std::move(pkl));
  const ValuePtr root = reader.run();
  const auto* dict = std::get_if<Dict>(&root->v);
  TORCH_CHECK(dict != nullptr, "load_tensors: '", path, "' does not hold a dict of tensors");
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& [k, v] : dict->items) {
    const auto* key = std::get_if<std::string>(&k->v);
    TORCH_CHECK(key != nullptr, "load_tensors: '", path, "' has a non-string key");
    const auto* tensor = std::get_if<at::Tensor>(&v->v);
    TORCH_CHECK(
        tensor != nullptr,
        "load_tensors: the value of \"",
        *key,
        "\" in '",
        path,
        "' is not a tensor");
    out.emplace_back(*key, *tensor);
  }
  return out;
}

} // namespace rotary_attention::detail

//! (being written)

pub async fn main(_args: Vec<String>) -> i32 {
    eprintln!("not written yet");
    1
}
